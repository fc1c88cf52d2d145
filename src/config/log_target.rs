//! `usage.log_path`: a file, or `-` for standard output.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

impl LogTarget {
    pub fn file(&self) -> Option<&Path> {
        match self {
            LogTarget::Stdout => None,
            LogTarget::File(p) => Some(p),
        }
    }
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("-"),
            LogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl From<&str> for LogTarget {
    fn from(s: &str) -> Self {
        if s == "-" {
            LogTarget::Stdout
        } else {
            LogTarget::File(PathBuf::from(s))
        }
    }
}

impl<'de> Deserialize<'de> for LogTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom(
                "an empty path: give a file, or - for standard output",
            ));
        }
        Ok(LogTarget::from(s.as_str()))
    }
}

impl Serialize for LogTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
