//! User-interactive authentication (client-server API, "User-Interactive
//! Authentication API"): which stage a client may complete next and when a
//! flow is done. A flow is an ordered list of stages; the stages a session
//! has completed must be a prefix of at least one flow.

/// Stage names the server offers.
pub mod stage {
    pub const DUMMY: &str = "m.login.dummy";
    pub const PASSWORD: &str = "m.login.password";
    pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
}

/// The operations guarded by interactive auth. A session started for one
/// operation cannot be used to authorise another (spec: "the server must
/// ensure the request is the same one the session was created for").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Register,
    DeleteDevices,
    ChangePassword,
    Deactivate,
    /// Replacing cross-signing keys (`/keys/device_signing/upload`).
    SigningKeys,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Register => "register",
            Operation::DeleteDevices => "delete_devices",
            Operation::ChangePassword => "change_password",
            Operation::Deactivate => "deactivate",
            Operation::SigningKeys => "signing_keys",
        }
    }
}

/// Whether `stage` may be completed now, given what the session completed.
pub fn may_attempt(flows: &[Vec<&str>], completed: &[String], stage: &str) -> bool {
    flows.iter().any(|flow| {
        flow.len() > completed.len() && flow.iter().zip(completed).all(|(a, b)| *a == b) && flow[completed.len()] == stage
    })
}

/// Whether the completed stages finish one of the flows.
pub fn is_complete(flows: &[Vec<&str>], completed: &[String]) -> bool {
    flows.iter().any(|flow| flow.len() == completed.len() && flow.iter().zip(completed).all(|(a, b)| *a == b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_flow_order() {
        let flows = vec![vec![stage::REGISTRATION_TOKEN, stage::DUMMY], vec![stage::PASSWORD]];
        let done = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(may_attempt(&flows, &done(&[]), stage::REGISTRATION_TOKEN));
        assert!(may_attempt(&flows, &done(&[]), stage::PASSWORD));
        assert!(!may_attempt(&flows, &done(&[]), stage::DUMMY));
        assert!(may_attempt(&flows, &done(&[stage::REGISTRATION_TOKEN]), stage::DUMMY));
        assert!(!may_attempt(&flows, &done(&[stage::REGISTRATION_TOKEN]), stage::PASSWORD));
        assert!(!is_complete(&flows, &done(&[stage::REGISTRATION_TOKEN])));
        assert!(is_complete(&flows, &done(&[stage::REGISTRATION_TOKEN, stage::DUMMY])));
        assert!(is_complete(&flows, &done(&[stage::PASSWORD])));
        assert!(!may_attempt(&flows, &done(&[stage::PASSWORD]), stage::PASSWORD));
    }
}
