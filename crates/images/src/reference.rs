//! Image references as users write them (`busybox`, `127.0.0.1:5000/app:1`,
//! `repo@sha256:...`), normalised the way Docker and containerd do: a first component with a
//! dot, a colon or named `localhost` is the registry host; without one the host is `docker.io`,
//! and a one-component Docker Hub name lives under `library/`.

use std::fmt;

use crate::ImageError;

const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`docker.io`, `127.0.0.1:5000`).
    pub host: String,
    /// The repository path in that registry (`library/busybox`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ImageError> {
        let invalid = |why: &str| ImageError::InvalidArgument(format!("reference {input:?} {why}"));
        if input.is_empty() {
            return Err(invalid("is empty"));
        }
        let (rest, digest) = match input.rsplit_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return Err(invalid("has an invalid digest"));
                }
                (name, Some(digest.to_owned()))
            }
            None => (input, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag.to_owned())),
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(invalid("has an invalid tag"));
            }
        }
        let (host, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first != first.to_lowercase() =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(invalid("has an invalid registry host"));
        }
        let repository = if host == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid(
                "has an invalid repository name (lower-case letters, digits, '.', '_', '-' and '/')",
            ));
        }
        Ok(Reference {
            host,
            repository,
            // A name alone means its `latest` tag.
            tag: if tag.is_none() && digest.is_none() {
                Some("latest".into())
            } else {
                tag
            },
            digest,
        })
    }

    /// What the registry's manifest endpoint is asked for: the digest when there is one.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `host/repository`, the name without tag or digest.
    pub fn locator(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether `digest` is `sha256:<64 hex>` (the only algorithm the content store keeps).
pub fn is_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = Reference::parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "team/app")
        );
        assert_eq!(r.object(), "v1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.object()), (None, d.as_str()));
        let r = Reference::parse("user/app:1").unwrap();
        assert_eq!(r.locator(), "docker.io/user/app");
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "",
            "Busybox",
            "a/b:",
            "a@sha256:12",
            "a:b/c d",
            "a//b",
            "a:-x",
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid argument"), "{bad}: {err}");
        }
    }
}
