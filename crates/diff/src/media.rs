//! Layer media types and their compression.

use std::io::{BufRead, BufReader, Read, Write};

use crate::DiffError;

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// The label containerd puts on a compressed layer: the digest of its tar (its diff ID).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; anything that is not a layer is
    /// NotImplemented, as containerd's differ answers.
    pub fn of_media_type(media_type: &str) -> Result<Compression, DiffError> {
        // Non-distributable layers share the suffixes of the ordinary ones.
        let base = media_type
            .replace(".nondistributable", "")
            .replace(".foreign", "");
        match base.as_str() {
            LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            LAYER_TAR_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
            LAYER_TAR_ZSTD => Ok(Compression::Zstd),
            _ => Err(DiffError::UnsupportedMediaType(media_type.to_owned())),
        }
    }

    /// The OCI layer media type with this compression.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => LAYER_TAR,
            Compression::Gzip => LAYER_TAR_GZIP,
            Compression::Zstd => LAYER_TAR_ZSTD,
        }
    }

    /// Compresses what is written into `out`; `finish` must be called at the end.
    /// Compresses what is written into `out`; `finish` must be called at the end.
    pub fn encoder<'a, W: Write + Send + 'a>(self, out: W) -> Result<Encoder<'a, W>, DiffError> {
        Ok(match self {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(out, 3)
                    .map_err(DiffError::io("starting zstd"))?,
            ),
        })
    }
}

/// Reads the tar out of `input`. The stream's own magic decides, as containerd's decompressor
/// does: registries do serve plain tars labelled gzip.
pub fn decompress<'a, R: Read + Send + 'a>(
    input: R,
) -> Result<Box<dyn Read + Send + 'a>, DiffError> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let head = input
        .fill_buf()
        .map_err(DiffError::io("reading the layer"))?;
    let sniffed = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    Ok(match sniffed {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(DiffError::io("starting zstd"))?,
        ),
    })
}

/// A writer compressing with one of the [`Compression`]s.
pub enum Encoder<'a, W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'a, W>),
}

impl<W: Write> Encoder<'_, W> {
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_their_compression() {
        assert_eq!(
            Compression::of_media_type(DOCKER_LAYER_GZIP).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::of_media_type(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            )
            .unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::of_media_type(LAYER_TAR).unwrap(),
            Compression::None
        );
        let err = Compression::of_media_type("application/vnd.oci.image.config.v1+json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported diff media type"), "{err}");
    }

    #[test]
    fn every_encoding_round_trips() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut e = c.encoder(Vec::new()).unwrap();
            e.write_all(b"layer bytes").unwrap();
            let packed = e.finish().unwrap();
            let mut out = Vec::new();
            decompress(&packed[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, b"layer bytes", "{c:?}");
        }
    }
}
