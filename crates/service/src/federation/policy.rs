//! Which servers this one federates with: the operator's `allow` and
//! `deny` lists (server names, `*` for any run of characters and `?` for
//! one, as in `m.room.server_acl`). With an allow list, a server outside
//! it is neither contacted nor heard; a denied server never is, allow list
//! or not. Pure, table-tested.

use chancery_proto::ruma::ServerName;

/// The operator's federation lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPolicy {
    /// `None`: every server not denied.
    allow: Option<Vec<String>>,
    deny: Vec<String>,
}

impl ServerPolicy {
    /// `allow` empty means no allow list (open federation, less `deny`).
    pub fn new(allow: &[String], deny: &[String]) -> Self {
        let lower = |patterns: &[String]| patterns.iter().map(|p| p.to_ascii_lowercase()).collect::<Vec<_>>();
        Self { allow: (!allow.is_empty()).then(|| lower(allow)), deny: lower(deny) }
    }

    /// Whether `server` may be contacted and heard.
    pub fn permits(&self, server: &ServerName) -> bool {
        let name = server.as_str().to_ascii_lowercase();
        if self.deny.iter().any(|p| glob_matches(p, &name)) {
            return false;
        }
        match &self.allow {
            None => true,
            Some(allow) => allow.iter().any(|p| glob_matches(p, &name)),
        }
    }

    /// Whether an allow list closes the federation.
    pub fn is_closed(&self) -> bool {
        self.allow.is_some()
    }
}

/// Whether a room's `m.room.server_acl` content lets `server` take part
/// (client-server API "Server Access Control Lists"): the port is not
/// considered; an IP literal is refused unless `allow_ip_literals` (true
/// by default); `deny` wins; a missing `allow` allows nobody.
pub fn room_acl_allows(content: &serde_json::Value, server: &ServerName) -> bool {
    let host = server.host().to_ascii_lowercase();
    if server.is_ip_literal() && content.get("allow_ip_literals").and_then(serde_json::Value::as_bool) == Some(false) {
        return false;
    }
    let patterns = |key: &str| -> Vec<String> {
        content
            .get(key)
            .and_then(serde_json::Value::as_array)
            .map(|list| list.iter().filter_map(|p| p.as_str().map(str::to_ascii_lowercase)).collect())
            .unwrap_or_default()
    };
    if patterns("deny").iter().any(|p| glob_matches(p, &host)) {
        return false;
    }
    patterns("allow").iter().any(|p| glob_matches(p, &host))
}

/// `*` matches any run of characters (also none), `?` exactly one.
/// Iterative with one backtrack point, so linear-ish in the input and
/// never recursive on hostile patterns.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &ServerName {
        <&ServerName>::try_from(s).unwrap()
    }

    #[test]
    fn globs() {
        let cases = [
            ("*", "a.example", true),
            ("*.gouv.fr", "agent.gouv.fr", true),
            ("*.gouv.fr", "gouv.fr", false),
            ("*.gouv.fr", "evil.fr", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("127.0.0.1:*", "127.0.0.1:8448", true),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxcxxb", false),
            ("exact.org", "exact.org", true),
            ("exact.org", "exact.org.evil", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn room_acls() {
        use serde_json::json;
        let acl = json!({"allow": ["*"], "deny": ["*.evil.org"], "allow_ip_literals": false});
        assert!(room_acl_allows(&acl, name("good.org:8448")), "ports are not considered");
        assert!(!room_acl_allows(&acl, name("a.evil.org")));
        assert!(!room_acl_allows(&acl, name("127.0.0.1:8448")), "no IP literals");
        let acl = json!({"allow": ["*.gouv.fr"]});
        assert!(room_acl_allows(&acl, name("interieur.gouv.fr")));
        assert!(!room_acl_allows(&acl, name("matrix.org")));
        assert!(room_acl_allows(&json!({"allow": ["127.0.0.1"]}), name("127.0.0.1:8448")), "IP literals allowed by default");
        assert!(!room_acl_allows(&json!({"deny": []}), name("anyone.org")), "no allow list: nobody");
    }

    #[test]
    fn open_federation_denies_only_the_deny_list() {
        let policy = ServerPolicy::new(&[], &["*.evil.org".into()]);
        assert!(!policy.is_closed());
        assert!(policy.permits(name("good.org")));
        assert!(!policy.permits(name("a.evil.org")));
    }

    #[test]
    fn an_allow_list_closes_the_federation_and_deny_still_wins() {
        let policy = ServerPolicy::new(&["*.gouv.fr".into(), "partner.eu".into()], &["old.gouv.fr".into()]);
        assert!(policy.is_closed());
        assert!(policy.permits(name("interieur.gouv.fr")));
        assert!(policy.permits(name("PARTNER.eu")));
        assert!(!policy.permits(name("matrix.org")));
        assert!(!policy.permits(name("old.gouv.fr")));
    }
}
