use crate::ContentError;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, ContentError> {
        validate(s)?;
        Ok(Digest(s.to_owned()))
    }

    pub(crate) fn from_sha256(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn encoded(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the form of a digest. Only sha256 is supported, as the issue requires of every store.
pub fn validate(s: &str) -> Result<(), ContentError> {
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return Err(ContentError::InvalidArgument(format!(
            "invalid digest {s:?}: no algorithm"
        )));
    };
    if algorithm != "sha256" {
        return Err(ContentError::InvalidArgument(format!(
            "unsupported digest algorithm {algorithm:?} in {s:?}: only sha256 is supported"
        )));
    }
    if encoded.len() != 64
        || !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ContentError::InvalidArgument(format!(
            "invalid digest {s:?}: sha256 wants 64 lowercase hex characters"
        )));
    }
    Ok(())
}
