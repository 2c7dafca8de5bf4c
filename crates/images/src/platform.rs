//! Platforms (`os/architecture[/variant]`), normalised as containerd normalises them
//! (`x86_64` is `amd64`, `aarch64` is `arm64`, whose `v8` variant is the default), and the rule
//! for picking a manifest out of an index.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ImageError;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        let (architecture, variant) = normalise_arch(architecture, variant);
        Platform {
            os: os.to_lowercase(),
            architecture,
            variant,
        }
    }

    /// The platform this daemon runs containers for.
    pub fn host() -> Platform {
        Platform::new(std::env::consts::OS, std::env::consts::ARCH, "")
    }

    /// `linux`, `amd64`, `linux/arm64`, `linux/arm/v7`: a part left out is the host's.
    pub fn parse(spec: &str) -> Result<Platform, ImageError> {
        let host = Platform::host();
        let parts: Vec<&str> = spec.split('/').collect();
        let invalid = || ImageError::InvalidArgument(format!("platform {spec:?}"));
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        match parts.as_slice() {
            [one] if is_os(one) => Ok(Platform::new(one, &host.architecture, &host.variant)),
            [one] => Ok(Platform::new(&host.os, one, "")),
            [os, arch] => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
            _ => Err(invalid()),
        }
    }

    /// Whether an image for `candidate` runs here: same OS and architecture; a variant asked
    /// for must be the candidate's, unless the candidate names none.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let candidate = Platform::new(&candidate.os, &candidate.architecture, &candidate.variant);
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && (self.variant.is_empty()
                || candidate.variant.is_empty()
                || self.variant == candidate.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

fn is_os(s: &str) -> bool {
    matches!(
        s.to_lowercase().as_str(),
        "linux" | "windows" | "darwin" | "freebsd" | "netbsd" | "openbsd" | "solaris" | "illumos"
    )
}

fn normalise_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_lowercase();
    let variant = variant.to_lowercase();
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => (
            "amd64".into(),
            if variant == "v1" { "" } else { &variant }.into(),
        ),
        "aarch64" | "arm64" => (
            "arm64".into(),
            match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                _ => variant,
            },
        ),
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => (
            "arm".into(),
            match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        "i386" | "i686" | "x86" => ("386".into(), variant),
        _ => (arch, variant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_like_containerd() {
        let host = Platform::host();
        assert_eq!(Platform::parse("linux").unwrap(), host);
        let arm = Platform::parse("linux/aarch64/v8").unwrap();
        assert_eq!(arm.to_string(), "linux/arm64");
        assert!(Platform::parse("linux/arm64").unwrap().matches(&arm));
        assert!(!Platform::parse("linux/amd64").unwrap().matches(&arm));
        let v7 = Platform::parse("linux/arm").unwrap();
        assert_eq!(v7.variant, "v7");
        assert!(!v7.matches(&Platform::new("linux", "arm", "v6")));
        assert!(Platform::parse("linux//x").is_err());
    }
}
