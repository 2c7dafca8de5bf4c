//! PullImage: crated's own pull into namespace `k8s.io`, unpacked into the CRI snapshotter,
//! then containerd's three records of a CRI image (its id, the repo tag, the repo digest).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use crated_api::containerd::services::images::v1 as images_api;
use crated_api::containerd::services::images::v1::images_server::Images;
use crated_api::containerd::types;
use crated_images::registry::CredentialSource;
use crated_images::{Credentials, Platform, Reference, RegistryOptions};
use crated_metadata::ImageRecord;
use crated_transfer::{Progress, PullRequest, Unpack};
use k8s_cri::v1 as cri;
use tonic::Status;

use super::resolve::PINNED_LABEL;
use super::CriImages;
use crate::config::CriConfig;
use crate::{in_namespace, CriError, NAMESPACE};

/// Every image CRI pulls carries it.
pub const MANAGED_LABEL: &str = "io.cri-containerd.image";

/// The credentials a PullImage gives, for the hosts it names (all, when it names none).
fn credentials(auth: Option<cri::AuthConfig>) -> Result<Option<CredentialSource>, CriError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let credentials = if !auth.identity_token.is_empty() {
        Credentials {
            username: String::new(),
            secret: auth.identity_token,
        }
    } else if !auth.username.is_empty() {
        Credentials {
            username: auth.username,
            secret: auth.password,
        }
    } else if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .map_err(|e| CriError::InvalidArgument(format!("auth is not base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| CriError::InvalidArgument("auth is not text".into()))?;
        let Some((username, password)) = text.split_once(':') else {
            return Err(CriError::InvalidArgument(
                "auth is not username:password".into(),
            ));
        };
        Credentials {
            username: username.to_owned(),
            secret: password.to_owned(),
        }
    } else {
        return Ok(None);
    };
    let server = auth.server_address;
    Ok(Some(Arc::new(move |host: String| {
        let matches = server.is_empty() || host_of(&server) == host;
        let answer = matches.then(|| credentials.clone());
        Box::pin(async move { answer })
    })))
}

/// Whether a registry host is this machine: `localhost` or a loopback address, with any port.
fn is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of a server address as clients give it (`https://host:port/path`, `host`).
fn host_of(server: &str) -> &str {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

impl CriImages {
    pub(crate) async fn pull(
        &self,
        config: &CriConfig,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, Status> {
        let edge = |e: CriError| crated_services::status::status(&e);
        let Some(puller) = &self.puller else {
            return Err(Status::failed_precondition(
                "the transfer plugin is not loaded: cannot pull",
            ));
        };
        let reference = Reference::parse(image).map_err(|e| edge(e.into()))?;
        let name = reference.to_string();
        let mut labels = HashMap::from([(MANAGED_LABEL.to_owned(), "managed".to_owned())]);
        let sandbox = Reference::parse(&config.sandbox_image)
            .map(|r| r.to_string())
            .ok();
        if sandbox.as_deref() == Some(name.as_str()) {
            labels.insert(PINNED_LABEL.to_owned(), "pinned".to_owned());
        }
        let host_dir = config
            .registry
            .config_path
            .split(':')
            .find(|dir| !dir.is_empty())
            .map(std::path::PathBuf::from);
        let request = PullRequest {
            reference: reference.clone(),
            registry: RegistryOptions {
                // As containerd's CRI: a registry on this host speaks plain http.
                plain_http: is_local(&reference.host),
                credentials: credentials(auth).map_err(edge)?,
                host_dir,
                ..Default::default()
            },
            image_name: name.clone(),
            labels: labels.clone(),
            platforms: vec![Platform::host()],
            unpacks: vec![Unpack {
                platform: Platform::host(),
                snapshotter: config.containerd.snapshotter.clone(),
            }],
        };
        let pulled = puller
            .pull(NAMESPACE, None, request, Progress::default())
            .await
            .map_err(|e| crated_services::status::status(&e))?;
        let resolved = self.resolver.resolve(&pulled.target).await.map_err(edge)?;
        let id = resolved.config_digest.clone();
        let mut names = vec![id.clone()];
        if reference.digest.is_none() {
            names.push(format!("{}@{}", reference.locator(), pulled.target.digest));
        }
        for record_name in names {
            self.put_record(&record_name, &pulled, &labels).await?;
        }
        Ok(id)
    }

    /// Creates the record `name` for the pulled image, or points an existing one at it, as
    /// containerd's CRI does; through the images service, so the change is published.
    async fn put_record(
        &self,
        name: &str,
        pulled: &ImageRecord,
        labels: &HashMap<String, String>,
    ) -> Result<(), Status> {
        let image = images_api::Image {
            name: name.to_owned(),
            labels: labels.clone(),
            target: Some(types::Descriptor {
                media_type: pulled.target.media_type.clone(),
                digest: pulled.target.digest.clone(),
                size: pulled.target.size,
                annotations: pulled.target.annotations.clone().into_iter().collect(),
            }),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .images
            .create(in_namespace(images_api::CreateImageRequest {
                image: Some(image.clone()),
                ..Default::default()
            }))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::AlreadyExists => self
                .images
                .update(in_namespace(images_api::UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into(), "labels".into()],
                    }),
                    ..Default::default()
                }))
                .await
                .map(drop),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn asked(auth: cri::AuthConfig, host: &str) -> Option<(String, String)> {
        let source = credentials(Some(auth)).unwrap()?;
        source(host.to_owned())
            .await
            .map(|c| (c.username, c.secret))
    }

    #[test]
    fn registries_on_this_host_are_local() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_local(host), "{host}");
        }
        for host in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "[fe80::1]:80",
        ] {
            assert!(!is_local(host), "{host}");
        }
    }

    #[tokio::test]
    async fn cri_auth_gives_credentials_to_the_server_it_names() {
        let basic = cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            server_address: "https://127.0.0.1:5000/v2/".into(),
            ..Default::default()
        };
        assert_eq!(
            asked(basic.clone(), "127.0.0.1:5000").await,
            Some(("u".into(), "p".into()))
        );
        assert_eq!(asked(basic, "docker.io").await, None);
        let encoded = cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("user:pass:word"),
            ..Default::default()
        };
        assert_eq!(
            asked(encoded, "any").await,
            Some(("user".into(), "pass:word".into()))
        );
        let token = cri::AuthConfig {
            identity_token: "refresh".into(),
            ..Default::default()
        };
        assert_eq!(
            asked(token, "any").await,
            Some((String::new(), "refresh".into()))
        );
        assert!(credentials(Some(cri::AuthConfig {
            auth: "%%%".into(),
            ..Default::default()
        }))
        .is_err());
    }
}
