//! `shield:`: the pre-authentication shield (off unless configured).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShieldConfig {
    /// Failed authentications one client address may have in a minute;
    /// beyond them it gets 429 before any token is read. `None`: no shield.
    #[serde(default)]
    pub failed_auth_per_ip_per_minute: Option<u32>,
}

impl ShieldConfig {
    /// What `check` (and `serve`) refuse.
    pub fn problems(&self) -> Vec<String> {
        match self.failed_auth_per_ip_per_minute {
            Some(0) => vec!["shield.failed_auth_per_ip_per_minute: must be at least 1 \
                 (0 would refuse every client; leave the key out to turn the shield off)"
                .to_string()],
            _ => Vec::new(),
        }
    }
}
