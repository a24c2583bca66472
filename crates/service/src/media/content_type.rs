//! What a download is served as: the stored `Content-Type` only when it
//! is a well-formed MIME type (RFC 9110 §8.3.1), and `inline` only for the
//! types the spec lists as unable to run script (spec "Serving inline
//! content", the same list as Synapse's `INLINE_CONTENT_TYPES`; no SVG, no
//! HTML, no XML). Everything else is an `attachment`, and every answer
//! carries a sandboxing `Content-Security-Policy` (set by the API).

use chancery_proto::limits::MAX_MEDIA_CONTENT_TYPE_BYTES;

/// The type of content whose type is unknown or not to be trusted.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Spec "Serving inline content": the only types served `inline`.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// A parameter value: a token or a quoted string of visible ASCII.
fn is_param_value(v: &str) -> bool {
    if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut escaped = false;
        for b in inner.bytes() {
            let visible = b == b'\t' || (b' '..=b'~').contains(&b);
            if !visible || (b == b'"' && !escaped) {
                return false;
            }
            escaped = !escaped && b == b'\\';
        }
        !escaped
    } else {
        is_token(v)
    }
}

/// `type "/" subtype *( OWS ";" OWS parameter )`, at most
/// `MAX_MEDIA_CONTENT_TYPE_BYTES` long. Parameter values are not split on
/// `;` inside quotes: such a value is refused, which only costs its
/// uploader the octet-stream fallback.
pub fn is_well_formed(content_type: &str) -> bool {
    if content_type.len() > MAX_MEDIA_CONTENT_TYPE_BYTES {
        return false;
    }
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default();
    let Some((kind, subtype)) = essence.split_once('/') else { return false };
    if !is_token(kind) || !is_token(subtype) {
        return false;
    }
    parts.all(|param| {
        let param = param.trim_matches([' ', '\t']);
        match param.split_once('=') {
            Some((name, value)) => is_token(name) && is_param_value(value),
            None => false,
        }
    })
}

/// The `Content-Type` a download is served with: the stored one if it is
/// well formed (text types get `charset=utf-8` when they name none, as
/// the spec allows), else `application/octet-stream`.
pub fn served(stored: Option<&str>) -> String {
    match stored {
        Some(ct) if is_well_formed(ct) => {
            let lower = ct.to_ascii_lowercase();
            if lower.starts_with("text/") && !lower.contains("charset=") { format!("{ct}; charset=utf-8") } else { ct.to_owned() }
        }
        _ => OCTET_STREAM.to_owned(),
    }
}

/// Whether content served as `content_type` may be `inline`: only the
/// spec's list, by the type and subtype, parameters ignored.
pub fn is_inline(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_types_are_kept() {
        let cases: &[(Option<&str>, &str)] = &[
            (Some("image/png"), "image/png"),
            (Some("application/pdf"), "application/pdf"),
            (Some("text/plain"), "text/plain; charset=utf-8"),
            (Some("text/plain; charset=iso-8859-1"), "text/plain; charset=iso-8859-1"),
            (Some("text/html"), "text/html; charset=utf-8"),
            (Some("application/x-thing; a=\"quoted value\""), "application/x-thing; a=\"quoted value\""),
            (None, OCTET_STREAM),
            (Some(""), OCTET_STREAM),
            (Some("png"), OCTET_STREAM),
            (Some("image/"), OCTET_STREAM),
            (Some("image/png\r\nX-Evil: 1"), OCTET_STREAM),
            (Some("image /png"), OCTET_STREAM),
            (Some("image/png; charset"), OCTET_STREAM),
            (Some("image/png; a=\"unterminated"), OCTET_STREAM),
            (Some("image/pñg"), OCTET_STREAM),
        ];
        for (stored, want) in cases {
            assert_eq!(served(*stored), *want, "{stored:?}");
        }
        assert_eq!(served(Some(&format!("a/{}", "b".repeat(MAX_MEDIA_CONTENT_TYPE_BYTES)))), OCTET_STREAM);
    }

    #[test]
    fn only_types_that_cannot_run_script_are_inline() {
        for inline in ["image/png", "IMAGE/JPEG", "image/gif; x=y", "video/mp4", "audio/ogg", "text/plain; charset=utf-8"] {
            assert!(is_inline(inline), "{inline}");
        }
        for attachment in [
            "text/html",
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/javascript",
            "text/javascript",
            "application/pdf",
            OCTET_STREAM,
            "application/x-shockwave-flash",
        ] {
            assert!(!is_inline(attachment), "{attachment}");
        }
    }
}
