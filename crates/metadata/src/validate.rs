//! containerd's rules for names and labels.

use std::sync::LazyLock;

use regex::Regex;

use crate::MetadataError;

const MAX_IDENTIFIER: usize = 76;
const MAX_LABEL: usize = 4096;

static IDENTIFIER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$").expect("identifier pattern compiles")
});

/// An identifier as containerd's `identifiers.Validate` accepts it (namespaces, container ids).
pub fn identifier(s: &str) -> Result<(), MetadataError> {
    if s.is_empty() {
        return Err(MetadataError::InvalidArgument(
            "identifier must not be empty".into(),
        ));
    }
    if s.len() > MAX_IDENTIFIER {
        return Err(MetadataError::InvalidArgument(format!(
            "identifier {s:?} greater than maximum length ({MAX_IDENTIFIER} characters)"
        )));
    }
    if !IDENTIFIER.is_match(s) {
        return Err(MetadataError::InvalidArgument(format!(
            "identifier {s:?} must match {}",
            IDENTIFIER.as_str()
        )));
    }
    Ok(())
}

/// A label as containerd's `labels.Validate` accepts it: key and value together at most 4096 bytes.
pub fn label(key: &str, value: &str) -> Result<(), MetadataError> {
    if key.len() + value.len() > MAX_LABEL {
        let shown: String = key.chars().take(10).collect();
        return Err(MetadataError::InvalidArgument(format!(
            "label key and value greater than maximum size ({MAX_LABEL} bytes), key: {shown}"
        )));
    }
    Ok(())
}

/// Why `s` is not a digest containerd accepts (go-digest's `Validate`): `algorithm:encoded`
/// with sha256, sha384 or sha512 and lowercase hex of the algorithm's length.
pub fn digest(s: &str) -> Result<(), &'static str> {
    const FORMAT: &str = "invalid checksum digest format";
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return Err(FORMAT);
    };
    if algorithm.is_empty() || encoded.is_empty() {
        return Err(FORMAT);
    }
    let hex_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            // go-digest: a well-formed digest of another algorithm is unsupported, anything
            // else malformed.
            return Err(if DIGEST.is_match(s) {
                "unsupported digest algorithm"
            } else {
                FORMAT
            });
        }
    };
    if encoded.len() != hex_len {
        return Err("invalid checksum digest length");
    }
    if !encoded
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(FORMAT);
    }
    Ok(())
}

static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$").expect("digest pattern compiles")
});

/// A lease resource as containerd's `parseLeaseResource` accepts it: `content` (its id a
/// digest), `ingests`, or `snapshots/<snapshotter>`.
pub fn lease_resource(resource_type: &str, id: &str) -> Result<(), MetadataError> {
    let parts: Vec<&str> = resource_type.split('/').collect();
    match parts[0] {
        "content" | "ingests" if parts.len() != 1 => Err(MetadataError::InvalidArgument(format!(
            "invalid resource type {resource_type}"
        ))),
        "content" => digest(id).map_err(|why| {
            MetadataError::InvalidArgument(format!("invalid content resource id {id}: {why}"))
        }),
        "ingests" => Ok(()),
        "snapshots" if parts.len() != 2 => Err(MetadataError::InvalidArgument(format!(
            "invalid snapshot resource type {resource_type}"
        ))),
        "snapshots" => Ok(()),
        _ => Err(MetadataError::NotImplemented(format!(
            "resource type {resource_type} not supported yet"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crated_errdefs::{HasKind, Kind};

    #[test]
    fn digests_as_go_digest_validates_them() {
        let hex = "a".repeat(64);
        assert_eq!(digest(&format!("sha256:{hex}")), Ok(()));
        assert_eq!(digest(&format!("sha512:{}", "0".repeat(128))), Ok(()));
        for (bad, why) in [
            ("", "invalid checksum digest format"),
            ("sha256", "invalid checksum digest format"),
            ("sha256:", "invalid checksum digest format"),
            (":abc", "invalid checksum digest format"),
            ("md5:abc", "unsupported digest algorithm"),
            ("MD5:abc", "invalid checksum digest format"),
            ("sha256:abc", "invalid checksum digest length"),
        ] {
            assert_eq!(digest(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            digest(&format!("sha256:{}", "Z".repeat(64))),
            Err("invalid checksum digest format")
        );
        assert_eq!(
            digest(&format!("sha256:{}", "A".repeat(64))),
            Err("invalid checksum digest format")
        );
    }

    #[test]
    fn lease_resources_of_containerds_types_only() {
        let d = format!("sha256:{}", "b".repeat(64));
        assert!(lease_resource("content", &d).is_ok());
        assert!(lease_resource("ingests", "any-ref").is_ok());
        assert!(lease_resource("snapshots/overlayfs", "key").is_ok());
        let kind = |t: &str, id: &str| lease_resource(t, id).unwrap_err().kind();
        assert_eq!(kind("content", "sha256:xyz"), Kind::InvalidArgument);
        assert_eq!(kind("content/x", &d), Kind::InvalidArgument);
        assert_eq!(kind("snapshots", "k"), Kind::InvalidArgument);
        assert_eq!(kind("snapshots/a/b", "k"), Kind::InvalidArgument);
        assert_eq!(kind("containers", "c"), Kind::NotImplemented);
        assert_eq!(
            lease_resource("bogus", "x").unwrap_err().to_string(),
            "resource type bogus not supported yet: not implemented"
        );
    }
}
