//! A small, bounded reader of a page's OpenGraph properties (`<meta
//! property="og:..." content="...">`), with the page's `<title>` and
//! description as fallbacks: what a URL preview shows. It looks only at
//! tags, never runs or builds a document, reads each byte of the page at
//! most a few times, and keeps at most `MAX_OPENGRAPH_PROPERTIES`
//! properties of at most `MAX_OPENGRAPH_VALUE_BYTES` each.

use chancery_proto::limits::{MAX_OPENGRAPH_PROPERTIES, MAX_OPENGRAPH_VALUE_BYTES};
use serde_json::{Map, Value as JsonValue, json};

/// The part of `s` up to `max` bytes, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes the character references a meta value or title holds.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[..rest.len().min(12)].find(';');
        let decoded = end.and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let code = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        name.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    code.and_then(char::from_u32).filter(|c| *c != '\0')
                }
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The attributes of a tag, from just after its name to its `>`.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let bytes = tag.as_bytes();
    let mut attrs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !matches!(bytes[i], b'=' | b'/') {
            i += 1;
        }
        let name = tag[start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && matches!(bytes[i], b'"' | b'\'') {
                let quote = bytes[i];
                let start = i + 1;
                let end = tag[start..].bytes().position(|b| b == quote).map_or(tag.len(), |p| start + p);
                value = decode_entities(&tag[start..end]);
                i = end + 1;
            } else {
                let start = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = decode_entities(&tag[start..i]);
            }
        }
        if !name.is_empty() {
            attrs.push((name, value));
        } else if i == start {
            // Nothing consumed: a stray character; step over it.
            i += 1;
        }
    }
    attrs
}

/// A value as it is shown: whitespace runs collapsed, bounded.
fn clean(value: &str) -> String {
    let collapsed = value.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&collapsed, MAX_OPENGRAPH_VALUE_BYTES).to_owned()
}

/// The OpenGraph properties of `html` (the first of each), plus `og:title`
/// from `<title>` and `og:description` from `<meta name="description">`
/// when the page has none. Widths and heights become numbers.
pub(crate) fn parse(html: &str) -> Map<String, JsonValue> {
    let mut og = Map::new();
    let mut title = None;
    let mut description = None;
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(found) = lower[at..].find('<') {
        let open = at + found;
        let rest = &lower[open + 1..];
        let name_len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'!' || *b == b'-').count();
        let name = &rest[..name_len];
        let Some(close) = lower[open..].find('>').map(|c| open + c) else { break };
        at = close + 1;
        match name {
            "meta" => {
                let attrs = attributes(&html[open + 1 + name_len..close]);
                let get = |key: &str| attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
                let Some(content) = get("content") else { continue };
                let key = get("property").or_else(|| get("name")).unwrap_or_default();
                if key.starts_with("og:") && key.len() <= 64 {
                    if og.len() < MAX_OPENGRAPH_PROPERTIES && !og.contains_key(key) {
                        og.insert(key.to_owned(), json!(clean(content)));
                    }
                } else if key.eq_ignore_ascii_case("description") && description.is_none() {
                    description = Some(clean(content));
                }
            }
            "title" if title.is_none() => {
                let end = lower[at..].find("</title").map_or(lower.len(), |e| at + e);
                title = Some(clean(&decode_entities(&html[at..end])));
                at = end;
            }
            "script" | "style" => {
                // Their text is no markup: skip to their end.
                let end_tag = format!("</{name}");
                at = lower[at..].find(&end_tag).map_or(lower.len(), |e| at + e);
            }
            "!--" => {
                at = lower[open..].find("-->").map_or(lower.len(), |e| open + e + 3);
            }
            _ => {}
        }
    }
    for (key, fallback) in [("og:title", title), ("og:description", description)] {
        if let Some(value) = fallback.filter(|v| !v.is_empty())
            && !og.contains_key(key)
            && og.len() < MAX_OPENGRAPH_PROPERTIES
        {
            og.insert(key.into(), json!(value));
        }
    }
    for key in ["og:image:width", "og:image:height"] {
        if let Some(n) = og.get(key).and_then(JsonValue::as_str).and_then(|v| v.parse::<u64>().ok()) {
            og.insert(key.into(), json!(n));
        }
    }
    og
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_graph_properties_are_read_from_the_head() {
        let html = r#"<!doctype html><html><head>
            <title>Fallback &amp; title</title>
            <meta charset="utf-8">
            <META PROPERTY="og:title" CONTENT="The  &quot;real&quot;
               title">
            <meta property='og:description' content='Caf&#233; &#x263A; &bogus; &'>
            <meta property="og:image" content="/img/cat.png" />
            <meta property="og:image" content="/img/second.png" />
            <meta property=og:image:width content=640>
            <meta name="og:image:height" content="480">
            <!-- <meta property="og:site_name" content="in a comment"> -->
            <script>var s = '<meta property="og:type" content="in a script">';</script>
            </head><body><meta property="og:url" content="https://example.org/x"></body></html>"#;
        let og = parse(html);
        assert_eq!(og["og:title"], "The \"real\" title");
        assert_eq!(og["og:description"], "Café ☺ &bogus; &");
        assert_eq!(og["og:image"], "/img/cat.png", "the first of each");
        assert_eq!(og["og:image:width"], 640);
        assert_eq!(og["og:image:height"], 480);
        assert_eq!(og["og:url"], "https://example.org/x");
        assert!(!og.contains_key("og:site_name") && !og.contains_key("og:type"), "{og:?}");
    }

    #[test]
    fn title_and_description_stand_in() {
        let og = parse("<title>Plain page</title><meta name=description content='About it'>");
        assert_eq!(og["og:title"], "Plain page");
        assert_eq!(og["og:description"], "About it");
        assert!(parse("").is_empty());
        assert!(parse("no markup at all").is_empty());
    }

    #[test]
    fn hostile_pages_are_bounded() {
        let many: String = (0..500).map(|n| format!("<meta property='og:p{n}' content='{}'>", "x".repeat(5_000))).collect();
        let og = parse(&many);
        assert_eq!(og.len(), MAX_OPENGRAPH_PROPERTIES);
        assert!(og.values().all(|v| v.as_str().unwrap().len() == MAX_OPENGRAPH_VALUE_BYTES));
        // Unclosed tags and quotes, stray bytes: no panic, nothing invented.
        for broken in ["<meta property=\"og:title\" content=\"never closed", "<<<>>>", "<meta", "<title>", "<!--", "<meta =>"] {
            let _ = parse(broken);
        }
        assert_eq!(truncate("aé", 2), "a");
    }
}
