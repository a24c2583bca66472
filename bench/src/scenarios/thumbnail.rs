//! `thumbnail`: what a photo from a phone costs the server. K distinct
//! 4,000×3,000 JPEGs (generated, untimed) are each uploaded, then asked
//! for an 800×600 `scale` and a 96×96 `crop` thumbnail, then the crop
//! again. Each image is new, so no cache answers the first two requests.
//!
//! Servers make thumbnails at different moments: Synapse at upload (every
//! configured size, inside the upload request), Chancery on the first
//! request of a size. The headline is therefore the sum a client waits
//! for, upload plus both first thumbnails (`upload_and_thumbnails_ms`);
//! each part is reported too. Peak resident memory during the measured
//! phase comes with every scenario (`rss_peak_kb`, needs `--pid`).

use std::io::Cursor;
use std::time::Instant;

use anyhow::{Result, bail};

use super::Ctx;
use crate::report::{Better, Outcome};
use crate::stats::Samples;

const WIDTH: u32 = 4_000;
const HEIGHT: u32 = 3_000;

/// A photo-like JPEG (gradients and noise, so it neither compresses to
/// nothing nor decodes faster than a photo), different for each `seed`.
fn photo(seed: u64) -> Result<Vec<u8>> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let img = image::RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let noise = (state >> 59) as u32;
        let r = (x * 255 / WIDTH + noise + seed as u32) % 256;
        let g = (y * 255 / HEIGHT + noise * 2) % 256;
        let b = ((x / 16 + y / 16) * 7 + noise) % 256;
        image::Rgb([r as u8, g as u8, b as u8])
    });
    let mut out = Cursor::new(Vec::new());
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    img.write_with_encoder(encoder)?;
    Ok(out.into_inner())
}

/// Checks a thumbnail decodes to the size asked for.
fn check(bytes: &[u8], content_type: &str, width: u32, height: u32, what: &str) -> Result<()> {
    if !content_type.starts_with("image/") {
        bail!("{what}: answered as {content_type:?}, not an image");
    }
    let img = image::load_from_memory(bytes)?;
    if (img.width(), img.height()) != (width, height) {
        bail!("{what}: {}×{} instead of {width}×{height}", img.width(), img.height());
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let samples = ctx.sizes.thumbnail_samples;
    o.param("images", samples);
    o.param("image", format!("{WIDTH}x{HEIGHT} JPEG"));
    o.param("thumbnails", "800x600 scale, 96x96 crop");
    let user = ctx.pool_users(1).await?.remove(0);
    let (mut upload, mut scale, mut crop, mut cached, mut total) =
        (Samples::new(), Samples::new(), Samples::new(), Samples::new(), Samples::new());
    let mut bytes_total = 0usize;

    ctx.measure_begin();
    for n in 0..samples {
        // Untimed: the image is made before the clock starts.
        let seed = n as u64 + 1;
        let jpeg = tokio::task::spawn_blocking(move || photo(seed)).await??;
        bytes_total += jpeg.len();

        let started = Instant::now();
        let mxc = ctx.server.upload_media(&user, jpeg, "image/jpeg", &format!("photo-{n}.jpg")).await?;
        let uploaded = started.elapsed();
        let t = Instant::now();
        let (big, big_type) =
            ctx.server.thumbnail(&user, &mxc, &[("width", "800"), ("height", "600"), ("method", "scale")]).await?;
        let scaled = t.elapsed();
        let t = Instant::now();
        let (small, small_type) =
            ctx.server.thumbnail(&user, &mxc, &[("width", "96"), ("height", "96"), ("method", "crop")]).await?;
        let cropped = t.elapsed();
        let whole = started.elapsed();
        let t = Instant::now();
        let (again, _) = ctx.server.thumbnail(&user, &mxc, &[("width", "96"), ("height", "96"), ("method", "crop")]).await?;
        cached.push(t.elapsed());

        check(&big, &big_type, 800, 600, "the 800×600 scale thumbnail")?;
        check(&small, &small_type, 96, 96, "the 96×96 crop thumbnail")?;
        if again != small {
            bail!("the 96×96 crop thumbnail asked again differs from the first");
        }
        upload.push(uploaded);
        scale.push(scaled);
        crop.push(cropped);
        total.push(whole);
    }
    ctx.measure_end("thumbnail", o).await;

    o.figure("upload_and_thumbnails_ms", total.median()?, Better::Lower);
    o.figure("upload_ms", upload.median()?, Better::Lower);
    o.figure("first_scale_800x600_ms", scale.median()?, Better::Lower);
    o.figure("first_crop_96x96_ms", crop.median()?, Better::Lower);
    o.figure("cached_crop_96x96_ms", cached.median()?, Better::Lower);
    o.param("mean_jpeg_bytes", bytes_total / samples.max(1));
    o.verified = format!(
        "{samples} images: every thumbnail decodes to the size asked for (800×600, 96×96), the crop asked again is the same bytes"
    );
    Ok(())
}
