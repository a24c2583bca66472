//! Thumbnails (spec "Thumbnails"): which box a request gets, how an image
//! is cut into it, and the decoding and encoding, which run on the
//! blocking pool with the decoder's limits (pixels, allocation), so a huge
//! or hostile image is a clean error and never an out-of-memory.
//!
//! The decisions are pure functions ([`choose_box`], [`plan`]); the image
//! work is [`probe`] (headers only) and [`render`].

use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::Path;

use chancery_proto::limits::{MAX_THUMBNAIL_DECODE_BYTES, MAX_THUMBNAIL_DIMENSION, MAX_THUMBNAIL_SOURCE_PIXELS};
use chancery_store::{ThumbnailKey, ThumbnailMethod};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, metadata::Orientation};

/// The box a request is answered from: of the configured boxes of the
/// requested method, the smallest at least as large as asked (the spec:
/// never a thumbnail smaller than requested), else the largest. Boxes are
/// few, so every request maps to one of them and is cached. `None` when
/// none of that method is configured.
pub(crate) fn choose_box(width: u32, height: u32, method: ThumbnailMethod, sizes: &[ThumbnailKey]) -> Option<ThumbnailKey> {
    let of_method = || sizes.iter().filter(|k| k.method == method);
    let area = |k: &&ThumbnailKey| u64::from(k.width) * u64::from(k.height);
    of_method()
        .filter(|k| k.width >= width && k.height >= height)
        .min_by_key(area)
        .or_else(|| of_method().max_by_key(area))
        .copied()
}

/// A rectangle of the source: `(x, y, width, height)`.
pub(crate) type Rect = (u32, u32, u32, u32);

/// How a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The original content: it fits the box already (the spec: "servers
    /// should return the original content rather than thumbnail it", and
    /// never upscale).
    Original,
    /// A still image of `width`×`height`, from `crop` of the source (all of
    /// it when `None`).
    Still { crop: Option<Rect>, width: u32, height: u32 },
}

/// What is known of a source before decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    pub format: ImageFormat,
    /// As displayed (after the EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// Whether it is an animation (a GIF of several frames, an animated
    /// WebP, an APNG).
    pub animated: bool,
}

/// Scales `(w, h)` by `num/den`, rounding, at least 1.
fn scaled(v: u32, num: u64, den: u64) -> u32 {
    u32::try_from((u64::from(v) * num + den / 2) / den.max(1)).unwrap_or(u32::MAX).max(1)
}

/// How to answer from `source` for `key` (spec "Thumbnails"): `scale`
/// keeps the aspect ratio and fits the box; `crop` takes the largest part
/// of the source with the box's aspect ratio, from its centre, and scales
/// it down to the box. Nothing is ever scaled up. An animation is served
/// as it is only when it fits the box and the client asked for animation
/// (`animated=true`); otherwise it becomes a still of its first frame (the
/// spec: without `animated=true` a server SHOULD NOT, with `false` MUST
/// NOT, answer an animation; animations are not resized).
pub(crate) fn plan(source: Source, key: ThumbnailKey, animation_wanted: bool) -> Plan {
    let (sw, sh) = (source.width.max(1), source.height.max(1));
    let (bw, bh) = (key.width.max(1), key.height.max(1));
    let still = match key.method {
        ThumbnailMethod::Scale => {
            if sw <= bw && sh <= bh {
                None
            } else if u64::from(bw) * u64::from(sh) <= u64::from(bh) * u64::from(sw) {
                // The source is wider than the box: its width decides.
                Some(Plan::Still { crop: None, width: bw, height: scaled(sh, u64::from(bw), u64::from(sw)) })
            } else {
                Some(Plan::Still { crop: None, width: scaled(sw, u64::from(bh), u64::from(sh)), height: bh })
            }
        }
        ThumbnailMethod::Crop => {
            // The largest rectangle of the box's aspect inside the source.
            let (cw, ch) = if u64::from(sw) * u64::from(bh) > u64::from(sh) * u64::from(bw) {
                (scaled(sh, u64::from(bw), u64::from(bh)).min(sw), sh)
            } else {
                (sw, scaled(sw, u64::from(bh), u64::from(bw)).min(sh))
            };
            let crop = (cw, ch) != (sw, sh);
            // Down to the box, never up.
            let (width, height) = if cw > bw { (bw, scaled(ch, u64::from(bw), u64::from(cw)).min(bh)) } else { (cw, ch) };
            if !crop && (width, height) == (sw, sh) {
                None
            } else {
                let rect = crop.then_some(((sw - cw) / 2, (sh - ch) / 2, cw, ch));
                Some(Plan::Still { crop: rect, width, height })
            }
        }
    };
    match still {
        Some(plan) => plan,
        None if source.animated && !animation_wanted => Plan::Still { crop: None, width: sw, height: sh },
        None => Plan::Original,
    }
}

/// Why an image could not be thumbnailed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ThumbnailError {
    /// Not an image of a format thumbnailed here (JPEG, PNG, GIF, WebP),
    /// or not decodable.
    #[error("cannot generate a thumbnail of this content")]
    Undecodable,
    /// More pixels, or more memory, than the limits allow.
    #[error("the image is too large to thumbnail")]
    TooLarge,
    #[error("reading the image failed: {0}")]
    Io(String),
}

/// The content type of a thumbnail format.
pub(crate) fn content_type(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Gif => "image/gif",
        ImageFormat::WebP => "image/webp",
        _ => "image/png",
    }
}

fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(u32::from(u16::MAX));
    limits.max_image_height = Some(u32::from(u16::MAX));
    limits.max_alloc = Some(MAX_THUMBNAIL_DECODE_BYTES);
    limits
}

fn image_error(e: image::ImageError) -> ThumbnailError {
    match e {
        image::ImageError::Limits(_) => ThumbnailError::TooLarge,
        // A file cut short or holding nonsense is bad content, not a
        // failing disk.
        image::ImageError::IoError(e)
            if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData) =>
        {
            ThumbnailError::Undecodable
        }
        image::ImageError::IoError(e) => ThumbnailError::Io(e.to_string()),
        _ => ThumbnailError::Undecodable,
    }
}

fn reader<R: BufRead + Seek>(input: R) -> Result<(ImageReader<R>, ImageFormat), ThumbnailError> {
    let mut reader = ImageReader::new(input).with_guessed_format().map_err(|e| ThumbnailError::Io(e.to_string()))?;
    let format = reader.format().ok_or(ThumbnailError::Undecodable)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP) {
        return Err(ThumbnailError::Undecodable);
    }
    reader.limits(limits());
    Ok((reader, format))
}

/// Refuses an image whose header claims more pixels, or a bigger decoded
/// buffer, than the limits allow.
fn check_size(decoder: &impl ImageDecoder) -> Result<(), ThumbnailError> {
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_THUMBNAIL_SOURCE_PIXELS || decoder.total_bytes() > MAX_THUMBNAIL_DECODE_BYTES {
        return Err(ThumbnailError::TooLarge);
    }
    Ok(())
}

fn swaps_sides(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Whether an image of a format that can animate does: a second GIF frame
/// (decoding at most two frames of an image that fits a thumbnail box), an
/// animated WebP, an APNG.
fn is_animated(path: &Path, format: ImageFormat) -> Result<bool, ThumbnailError> {
    use image::AnimationDecoder;
    let file = || std::fs::File::open(path).map(BufReader::new).map_err(|e| ThumbnailError::Io(e.to_string()));
    Ok(match format {
        ImageFormat::Gif => {
            let decoder = image::codecs::gif::GifDecoder::new(file()?).map_err(image_error)?;
            decoder.into_frames().take(2).filter(Result::is_ok).count() > 1
        }
        ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(file()?).map_err(image_error)?.has_animation(),
        ImageFormat::Png => image::codecs::png::PngDecoder::new(file()?).map_err(image_error)?.is_apng().map_err(image_error)?,
        _ => false,
    })
}

/// Reads the headers of the image at `path` (blocking): its format and
/// displayed size, and, when it fits within `fits` (a box it may be served
/// in whole), whether it is animated. `TooLarge` past the pixel limit.
pub(crate) fn probe(path: &Path, fits: (u32, u32)) -> Result<Source, ThumbnailError> {
    let file = std::fs::File::open(path).map_err(|e| ThumbnailError::Io(e.to_string()))?;
    let (reader, format) = reader(BufReader::new(file))?;
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    check_size(&decoder)?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = if swaps_sides(orientation) { (h, w) } else { (w, h) };
    drop(decoder);
    let may_animate = matches!(format, ImageFormat::Gif | ImageFormat::WebP | ImageFormat::Png);
    let animated = may_animate && width <= fits.0 && height <= fits.1 && is_animated(path, format)?;
    Ok(Source { format, width, height, animated })
}

/// Decodes the image at `path` (its first frame) once, applies its EXIF
/// orientation, and makes a still of it for each plan: cut as the plan
/// says and encoded as JPEG (quality 80) from a JPEG, PNG otherwise
/// (keeping transparency). Blocking and CPU-bound: run on the blocking
/// pool, a few at a time. The decoding is most of the cost, so one pass
/// makes every box an item will be asked for.
pub(crate) fn render_all(path: &Path, plans: &[Plan]) -> Result<Vec<(Vec<u8>, ImageFormat)>, ThumbnailError> {
    for plan in plans {
        let Plan::Still { width, height, .. } = *plan else { return Err(ThumbnailError::Undecodable) };
        if width == 0 || height == 0 || width > MAX_THUMBNAIL_DIMENSION || height > MAX_THUMBNAIL_DIMENSION {
            return Err(ThumbnailError::TooLarge);
        }
    }
    let file = std::fs::File::open(path).map_err(|e| ThumbnailError::Io(e.to_string()))?;
    let (reader, format) = reader(BufReader::new(file))?;
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    // Before a single pixel buffer is allocated: what the header claims
    // is what the decoder would allocate.
    check_size(&decoder)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    // Resizing reads every source pixel: shrink a large source once to
    // twice what the most demanding box needs, and cut every box from that.
    let factor = intermediate_factor(image.width(), image.height(), plans);
    let plans: Vec<Plan> = if factor < 1.0 {
        let (w, h) = (scale_by(image.width(), factor), scale_by(image.height(), factor));
        let factor_x = f64::from(w) / f64::from(image.width());
        let factor_y = f64::from(h) / f64::from(image.height());
        // Halving by averaging 2×2 blocks is a few times cheaper per source
        // pixel than the general resize; it does the bulk of the shrinking.
        while image.width() >= 2 * w && image.height() >= 2 * h {
            match halve(&image) {
                Some(half) => image = half,
                None => break,
            }
        }
        image = image.thumbnail_exact(w, h);
        plans.iter().map(|plan| shrink_plan(*plan, factor_x, factor_y, w, h)).collect()
    } else {
        plans.to_vec()
    };
    plans
        .iter()
        .map(|plan| {
            let Plan::Still { crop, width, height } = *plan else { return Err(ThumbnailError::Undecodable) };
            let cropped;
            let source = match crop {
                Some((x, y, w, h)) => {
                    cropped = image.crop_imm(x, y, w, h);
                    &cropped
                }
                None => &image,
            };
            let thumb = if (source.width(), source.height()) == (width, height) {
                source.clone()
            } else {
                source.thumbnail_exact(width, height)
            };
            encode(&thumb, format)
        })
        .collect()
}

/// The image at half its size, each pixel the mean of a 2×2 block (an odd
/// last row or column dropped); `None` for pixel types other than 8-bit
/// grey, RGB and RGBA (those are resized the general way).
fn halve(image: &DynamicImage) -> Option<DynamicImage> {
    fn halve_raw(raw: &[u8], width: u32, height: u32, channels: usize) -> Vec<u8> {
        let (w, h) = ((width / 2) as usize, (height / 2) as usize);
        let stride = width as usize * channels;
        let mut out = Vec::with_capacity(w * h * channels);
        for y in 0..h {
            let (top, bottom) = (&raw[2 * y * stride..][..stride], &raw[(2 * y + 1) * stride..][..stride]);
            for x in 0..w {
                for c in 0..channels {
                    let at = 2 * x * channels + c;
                    let sum = u16::from(top[at])
                        + u16::from(top[at + channels])
                        + u16::from(bottom[at])
                        + u16::from(bottom[at + channels]);
                    out.push(((sum + 2) / 4) as u8);
                }
            }
        }
        out
    }
    let (width, height) = (image.width(), image.height());
    let (w, h) = (width / 2, height / 2);
    if w == 0 || h == 0 {
        return None;
    }
    Some(match image {
        DynamicImage::ImageRgb8(img) => {
            DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, halve_raw(img.as_raw(), width, height, 3))?)
        }
        DynamicImage::ImageRgba8(img) => {
            DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, halve_raw(img.as_raw(), width, height, 4))?)
        }
        DynamicImage::ImageLuma8(img) => {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, halve_raw(img.as_raw(), width, height, 1))?)
        }
        _ => return None,
    })
}

fn scale_by(v: u32, factor: f64) -> u32 {
    ((f64::from(v) * factor).round() as u32).max(1)
}

/// How much a `width`×`height` source can shrink before it is cut into
/// `plans`: to twice the resolution the most demanding plan takes from it
/// (a box's pixels per pixel of the part of the source it shows), so the
/// area averaging of the last step still has several pixels to average.
/// 1 (no shrinking) when some plan needs more than half the source, or
/// there is no still to make.
pub(crate) fn intermediate_factor(width: u32, height: u32, plans: &[Plan]) -> f64 {
    let needed = plans
        .iter()
        .filter_map(|plan| match *plan {
            Plan::Still { crop, width: tw, height: th } => {
                let (cw, ch) = crop.map_or((width, height), |(_, _, w, h)| (w, h));
                Some((f64::from(tw) / f64::from(cw.max(1))).max(f64::from(th) / f64::from(ch.max(1))))
            }
            Plan::Original => None,
        })
        .fold(0.0f64, f64::max);
    if needed > 0.0 { (2.0 * needed).min(1.0) } else { 1.0 }
}

/// A plan of the source, made for the source shrunk by these factors to
/// `w`×`h`: its crop scaled (and kept inside), its size unchanged but never
/// larger than its part of the shrunk source.
fn shrink_plan(plan: Plan, factor_x: f64, factor_y: f64, w: u32, h: u32) -> Plan {
    let Plan::Still { crop, width, height } = plan else { return plan };
    let crop = crop.map(|(x, y, cw, ch)| {
        let x = ((f64::from(x) * factor_x).round() as u32).min(w - 1);
        let y = ((f64::from(y) * factor_y).round() as u32).min(h - 1);
        (x, y, scale_by(cw, factor_x).min(w - x), scale_by(ch, factor_y).min(h - y))
    });
    let (cw, ch) = crop.map_or((w, h), |(_, _, cw, ch)| (cw, ch));
    Plan::Still { crop, width: width.min(cw), height: height.min(ch) }
}

/// JPEG (quality 80) for a JPEG source without transparency, PNG otherwise.
fn encode(thumb: &DynamicImage, source_format: ImageFormat) -> Result<(Vec<u8>, ImageFormat), ThumbnailError> {
    let format =
        if source_format == ImageFormat::Jpeg && !thumb.color().has_alpha() { ImageFormat::Jpeg } else { ImageFormat::Png };
    let mut bytes = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80);
            thumb.to_rgb8().write_with_encoder(encoder).map_err(image_error)?;
        }
        _ => {
            let encoder = image::codecs::png::PngEncoder::new_with_quality(
                Cursor::new(&mut bytes),
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            );
            thumb.write_with_encoder(encoder).map_err(image_error)?;
        }
    }
    Ok((bytes, format))
}

/// One still: [`render_all`] of one plan.
#[cfg(test)]
pub(crate) fn render(path: &Path, plan: Plan) -> Result<(Vec<u8>, ImageFormat), ThumbnailError> {
    render_all(path, &[plan]).map(|mut all| all.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ThumbnailMethod::{Crop, Scale};

    fn key(width: u32, height: u32, method: ThumbnailMethod) -> ThumbnailKey {
        ThumbnailKey { width, height, method }
    }

    /// The spec's recommended sizes.
    fn spec_sizes() -> Vec<ThumbnailKey> {
        vec![key(32, 32, Crop), key(96, 96, Crop), key(320, 240, Scale), key(640, 480, Scale), key(800, 600, Scale)]
    }

    #[test]
    fn a_request_gets_the_smallest_box_not_smaller_than_it() {
        let sizes = spec_sizes();
        let cases = [
            ((1, 1, Crop), Some(key(32, 32, Crop))),
            ((32, 32, Crop), Some(key(32, 32, Crop))),
            ((33, 20, Crop), Some(key(96, 96, Crop))),
            ((500, 500, Crop), Some(key(96, 96, Crop))),
            ((100, 100, Scale), Some(key(320, 240, Scale))),
            ((320, 241, Scale), Some(key(640, 480, Scale))),
            ((800, 600, Scale), Some(key(800, 600, Scale))),
            ((4000, 3000, Scale), Some(key(800, 600, Scale))),
        ];
        for ((w, h, m), want) in cases {
            assert_eq!(choose_box(w, h, m, &sizes), want, "{w}x{h} {m:?}");
        }
        assert_eq!(choose_box(10, 10, Crop, &[key(320, 240, Scale)]), None);
    }

    fn source(width: u32, height: u32) -> Source {
        Source { format: ImageFormat::Jpeg, width, height, animated: false }
    }

    fn still(width: u32, height: u32, crop: Option<Rect>) -> Plan {
        Plan::Still { crop, width, height }
    }

    #[test]
    fn images_are_cut_as_the_spec_says_and_never_scaled_up() {
        let cases = [
            // scale: fit the box, keep the aspect.
            (source(4000, 3000), key(800, 600, Scale), still(800, 600, None)),
            (source(4000, 2000), key(800, 600, Scale), still(800, 400, None)),
            (source(1000, 3000), key(800, 600, Scale), still(200, 600, None)),
            (source(1000, 500), key(800, 600, Scale), still(800, 400, None)),
            (source(640, 480), key(800, 600, Scale), Plan::Original),
            (source(800, 600), key(800, 600, Scale), Plan::Original),
            (source(900, 10), key(320, 240, Scale), still(320, 4, None)),
            (source(10_000, 1), key(320, 240, Scale), still(320, 1, None)),
            // crop: the centre in the box's aspect, then down to the box.
            (source(4000, 3000), key(96, 96, Crop), still(96, 96, Some((500, 0, 3000, 3000)))),
            (source(3000, 4000), key(96, 96, Crop), still(96, 96, Some((0, 500, 3000, 3000)))),
            (source(96, 96), key(96, 96, Crop), Plan::Original),
            (source(50, 50), key(96, 96, Crop), Plan::Original),
            (source(100, 50), key(96, 96, Crop), still(50, 50, Some((25, 0, 50, 50)))),
            (source(200, 200), key(96, 96, Crop), still(96, 96, None)),
            (source(1000, 1000), key(320, 240, Crop), still(320, 240, Some((0, 125, 1000, 750)))),
        ];
        for (src, k, want) in cases {
            assert_eq!(plan(src, k, false), want, "{src:?} {k:?}");
        }
    }

    #[test]
    fn animations_are_served_whole_only_when_asked_for_and_small() {
        let gif = Source { format: ImageFormat::Gif, width: 100, height: 100, animated: true };
        let box_ = key(320, 240, Scale);
        assert_eq!(plan(gif, box_, true), Plan::Original);
        assert_eq!(plan(gif, box_, false), still(100, 100, None), "no animation unless asked");
        let large = Source { width: 1000, height: 1000, ..gif };
        assert_eq!(plan(large, box_, true), still(240, 240, None), "animations are not resized");
        let static_gif = Source { animated: false, ..gif };
        assert_eq!(plan(static_gif, box_, false), Plan::Original);
    }

    #[test]
    fn large_sources_shrink_once_to_twice_what_the_boxes_need() {
        let boxes = [still(800, 600, None), still(96, 96, Some((500, 0, 3000, 3000))), still(32, 32, Some((500, 0, 3000, 3000)))];
        // 800/4000 = 0.2 is the most any box takes: shrink to 0.4.
        assert!((intermediate_factor(4000, 3000, &boxes) - 0.4).abs() < 1e-9);
        // A box taking more than half the source: no shrinking.
        assert_eq!(intermediate_factor(1000, 750, &[still(800, 600, None)]), 1.0);
        assert_eq!(intermediate_factor(4000, 3000, &[Plan::Original]), 1.0);
        // Crops follow the shrinking and stay inside the shrunk source.
        let shrunk = shrink_plan(still(96, 96, Some((500, 0, 3000, 3000))), 0.4, 0.4, 1600, 1200);
        assert_eq!(shrunk, still(96, 96, Some((200, 0, 1200, 1200))));
        let edge = shrink_plan(still(96, 96, Some((999, 0, 1, 3000))), 0.4, 0.4, 400, 1200);
        assert_eq!(edge, still(1, 96, Some((399, 0, 1, 1200))));
    }

    #[test]
    fn halving_averages_two_by_two_blocks() {
        let img = image::RgbImage::from_raw(3, 2, vec![0, 0, 0, 10, 20, 30, 99, 99, 99, 4, 8, 12, 2, 4, 6, 99, 99, 99]).unwrap();
        let half = halve(&DynamicImage::ImageRgb8(img)).unwrap();
        assert_eq!((half.width(), half.height()), (1, 1));
        assert_eq!(half.to_rgb8().as_raw(), &vec![4, 8, 12]);
        assert!(halve(&DynamicImage::new_rgb8(1, 5)).is_none());
        assert!(halve(&DynamicImage::new_rgb16(4, 4)).is_none());
    }

    fn encoded(image: DynamicImage, format: ImageFormat) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        image.save_with_format(file.path(), format).unwrap();
        file
    }

    #[test]
    fn images_are_decoded_cut_and_encoded() {
        let photo = encoded(DynamicImage::new_rgb8(400, 300), ImageFormat::Jpeg);
        let src = probe(photo.path(), (800, 600)).unwrap();
        assert_eq!(src, source(400, 300));
        let (bytes, format) = render(photo.path(), plan(src, key(96, 96, Crop), false)).unwrap();
        assert_eq!(format, ImageFormat::Jpeg);
        let thumb = image::load_from_memory(&bytes).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (96, 96));

        let logo = encoded(DynamicImage::new_rgba8(640, 480), ImageFormat::Png);
        let src = probe(logo.path(), (320, 240)).unwrap();
        let (bytes, format) = render(logo.path(), plan(src, key(320, 240, Scale), false)).unwrap();
        assert_eq!(format, ImageFormat::Png);
        let thumb = image::load_from_memory(&bytes).unwrap();
        assert_eq!((thumb.width(), thumb.height(), thumb.color().has_alpha()), (320, 240, true));
    }

    #[test]
    fn hostile_images_are_clean_errors() {
        let garbage = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(garbage.path(), b"<html><script>alert(1)</script></html>").unwrap();
        assert_eq!(probe(garbage.path(), (96, 96)), Err(ThumbnailError::Undecodable));

        // A PNG whose header claims 100,000 × 100,000 pixels.
        let mut png = Vec::new();
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&ihdr);
        let mut crc_input = b"IHDR".to_vec();
        crc_input.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        for chunk in [b"IDAT", b"IEND"] {
            png.extend_from_slice(&0u32.to_be_bytes());
            png.extend_from_slice(chunk);
            png.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        let bomb = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(bomb.path(), &png).unwrap();
        assert_eq!(probe(bomb.path(), (96, 96)), Err(ThumbnailError::TooLarge));
        // Even asked to render it, nothing is allocated for it.
        assert_eq!(render(bomb.path(), still(96, 96, None)), Err(ThumbnailError::TooLarge));

        // Only the formats thumbnailed here are decoded at all.
        let bitmap = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(bitmap.path(), [b"BM".as_slice(), &[0; 64]].concat()).unwrap();
        assert_eq!(probe(bitmap.path(), (96, 96)), Err(ThumbnailError::Undecodable));
    }

    /// CRC-32 (ISO-HDLC), for a PNG chunk made by hand.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
