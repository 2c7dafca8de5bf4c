//! An OCI distribution (Docker registry v2) client for one repository: resolving a tag or
//! digest to a manifest, fetching manifests and blobs with their digests checked, and opening a
//! blob at an offset so a cut download resumes where it stopped (`Range`). Authentication
//! follows the registry's `WWW-Authenticate` challenge: `Basic` with the credentials, or
//! `Bearer` with a token fetched from the challenge's realm (anonymously or with the
//! credentials), then kept for later requests. Credentials are asked for only when a challenge
//! comes, through [`CredentialSource`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use crate::hosts::Host;
use crate::manifest::{digest_of, MANIFEST_TYPES};
use crate::{Descriptor, ImageError, Reference};

/// A manifest larger than this is refused, as containerd refuses one over its limit.
const MANIFEST_LIMIT: usize = 8 << 20;
/// A token server's answer is a small JSON object; a larger one is refused, not buffered.
const TOKEN_LIMIT: usize = 1 << 20;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Empty with a refresh token in `secret`.
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <secret>)", self.username)
    }
}

pub type CredentialFuture = Pin<Box<dyn Future<Output = Option<Credentials>> + Send>>;

/// Where credentials come from once a registry asks for them: given the host, the
/// credentials for it, or None to stay anonymous.
pub type CredentialSource = Arc<dyn Fn(String) -> CredentialFuture + Send + Sync>;

#[derive(Clone, Default)]
pub struct RegistryOptions {
    /// Talk http rather than https (`--plain-http`, or `default_scheme = "http"`).
    pub plain_http: bool,
    /// Sent with every request.
    pub headers: Vec<(String, String)>,
    pub credentials: Option<CredentialSource>,
    /// containerd's hosts directory, read for the reference's host ([`crate::hosts`]).
    pub host_dir: Option<std::path::PathBuf>,
}

/// How requests are authorised once a challenge was answered.
#[derive(Clone)]
enum Authorization {
    None,
    Header(HeaderValue),
}

/// One host the registry is reached through ([`crate::hosts`]), with its own TLS settings and
/// the authorization its challenge was answered with.
struct Remote {
    http: reqwest::Client,
    /// `scheme://authority/v2/<repository>`
    base: String,
    /// `?ns=<registry>` when this host is not the registry itself, as containerd asks mirrors.
    query: String,
    resolve: bool,
    pull: bool,
    headers: HeaderMap,
    auth: Mutex<Authorization>,
    /// One challenge answered at a time, so concurrent requests do not all fetch tokens.
    challenge: tokio::sync::Mutex<()>,
}

pub struct Registry {
    /// Tried in order: the first that answers serves the request.
    remotes: Vec<Remote>,
    reference: Reference,
    credentials: Option<CredentialSource>,
}

/// A blob's body from `offset` on.
pub struct BlobBody {
    /// Where the body starts: the offset asked for, or 0 when the registry ignored the range.
    pub offset: u64,
    response: reqwest::Response,
}

impl BlobBody {
    /// The next piece of the body, None at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ImageError> {
        self.response
            .chunk()
            .await
            .map_err(ImageError::http("reading a blob"))
    }
}

fn is_loopback(host: &str) -> bool {
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    matches!(name, "localhost" | "[::1]") || name.starts_with("127.")
}

impl Registry {
    pub fn new(reference: &Reference, options: RegistryOptions) -> Result<Registry, ImageError> {
        let hosts = match &options.host_dir {
            Some(dir) => crate::hosts::load(dir, &reference.host)?,
            None => None,
        };
        let remotes = hosts
            .unwrap_or_else(|| vec![Host::registry()])
            .iter()
            .map(|h| Remote::new(reference, &options, h))
            .collect::<Result<_, _>>()?;
        Ok(Registry {
            remotes,
            reference: reference.clone(),
            credentials: options.credentials,
        })
    }

    /// `attempt` at each host that `can`, in order: the first answer, else the first host's
    /// error, as containerd's resolver and fetcher go from one host to the next.
    async fn first_answer<'a, T, Attempt>(
        &'a self,
        can: fn(&Remote) -> bool,
        what: &str,
        attempt: impl Fn(&'a Remote) -> Attempt,
    ) -> Result<T, ImageError>
    where
        Attempt: Future<Output = Result<T, ImageError>>,
    {
        let mut first = None;
        for remote in self.remotes.iter().filter(|r| can(r)) {
            match attempt(remote).await {
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    tracing::info!(host = %remote.base, %error, "trying next host");
                    first.get_or_insert(error);
                }
            }
        }
        Err(first.unwrap_or_else(|| {
            ImageError::NotFound(format!("no host of {} may {what}", self.reference.host))
        }))
    }

    /// Resolves the reference to the descriptor of its manifest or index, with the document:
    /// the first host that can resolve and answers does, as containerd's resolver goes from one
    /// host to the next; else the first host's error.
    pub async fn resolve(&self) -> Result<(Descriptor, Vec<u8>), ImageError> {
        self.first_answer(
            |r| r.resolve,
            "resolve",
            async |remote| self.resolve_on(remote).await,
        )
        .await
    }

    async fn resolve_on(&self, remote: &Remote) -> Result<(Descriptor, Vec<u8>), ImageError> {
        let object = self.reference.object().to_owned();
        let response = self.manifest_request(remote, &object).await?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(response, MANIFEST_LIMIT, &object).await?;
        let digest = digest_of(&body);
        let claimed = self.reference.digest.clone().or(header_digest);
        if let Some(claimed) = claimed {
            if claimed != digest {
                return Err(ImageError::FailedPrecondition(format!(
                    "manifest of {} has digest {digest}, expected {claimed}",
                    self.reference
                )));
            }
        }
        let desc = Descriptor {
            media_type,
            digest,
            size: body.len() as i64,
            ..Default::default()
        };
        Ok((desc, body))
    }

    /// A manifest or index by its descriptor, checked against its digest and size, from the
    /// first host that can pull and serves it.
    pub async fn fetch_manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        self.first_answer(
            |r| r.pull,
            "pull",
            async |remote| {
                let response = self.manifest_request(remote, &desc.digest).await?;
                let body = read_limited(response, MANIFEST_LIMIT, &desc.digest).await?;
                check(desc, &body)?;
                Ok(body)
            },
        )
        .await
    }

    /// A small blob (an image config) in memory, checked against its digest and size.
    pub async fn fetch_small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        // The declared size is the registry's word: it bounds nothing we allocate.
        if desc.size > MANIFEST_LIMIT as i64 {
            return Err(ImageError::FailedPrecondition(format!(
                "blob {} declares {} bytes, more than the {MANIFEST_LIMIT} read into memory",
                desc.digest, desc.size
            )));
        }
        let mut body = self.open_blob(&desc.digest, 0).await?;
        let mut data = Vec::with_capacity(desc.size.max(0) as usize);
        while let Some(chunk) = body.chunk().await? {
            if data.len() + chunk.len() > MANIFEST_LIMIT {
                return Err(ImageError::FailedPrecondition(format!(
                    "blob {} is larger than {MANIFEST_LIMIT} bytes",
                    desc.digest
                )));
            }
            data.extend_from_slice(&chunk);
        }
        check(desc, &data)?;
        Ok(data)
    }

    /// Opens blob `digest` from `offset` on, at the first host that can pull and serves it.
    /// The registry may answer the whole blob instead: the body says where it starts.
    pub async fn open_blob(&self, digest: &str, offset: u64) -> Result<BlobBody, ImageError> {
        self.first_answer(
            |r| r.pull,
            "pull",
            async |remote| self.open_blob_on(remote, digest, offset).await,
        )
        .await
    }

    async fn open_blob_on(
        &self,
        remote: &Remote,
        digest: &str,
        offset: u64,
    ) -> Result<BlobBody, ImageError> {
        let url = format!("{}/blobs/{digest}{}", remote.base, remote.query);
        let response = self
            .send(remote, Method::GET, &url, |mut h| {
                if offset > 0 {
                    h.insert(
                        RANGE,
                        HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii"),
                    );
                }
                h
            })
            .await?;
        let start = if response.status() == StatusCode::PARTIAL_CONTENT {
            offset
        } else {
            0
        };
        match response.status() {
            s if s.is_success() => Ok(BlobBody {
                offset: start,
                response,
            }),
            s => Err(status_error(s, &format!("blob {digest}"))),
        }
    }

    async fn manifest_request(
        &self,
        remote: &Remote,
        object: &str,
    ) -> Result<reqwest::Response, ImageError> {
        let url = format!("{}/manifests/{object}{}", remote.base, remote.query);
        let accept = HeaderValue::from_str(&MANIFEST_TYPES.join(", ")).expect("ascii");
        let response = self
            .send(remote, Method::GET, &url, |mut h| {
                h.entry(ACCEPT).or_insert(accept.clone());
                h
            })
            .await?;
        if !response.status().is_success() {
            return Err(status_error(
                response.status(),
                &format!("{}@{object}", self.reference.locator()),
            ));
        }
        Ok(response)
    }

    /// Sends a request to one host; a 401 is answered once, following its challenge, and the
    /// request sent again.
    async fn send(
        &self,
        remote: &Remote,
        method: Method,
        url: &str,
        headers: impl Fn(HeaderMap) -> HeaderMap,
    ) -> Result<reqwest::Response, ImageError> {
        let mut answered = false;
        loop {
            let mut h = headers(remote.headers.clone());
            let used = remote
                .auth
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Authorization::Header(v) = &used {
                h.insert(AUTHORIZATION, v.clone());
            }
            let response = remote
                .http
                .request(method.clone(), url)
                .headers(h)
                .send()
                .await
                .map_err(ImageError::http(format!("{method} {url}")))?;
            if response.status() != StatusCode::UNAUTHORIZED || answered {
                if response.status() == StatusCode::UNAUTHORIZED {
                    return Err(ImageError::Unauthorized(format!(
                        "{} refused the credentials for {}",
                        self.reference.host,
                        self.reference.locator()
                    )));
                }
                return Ok(response);
            }
            answered = true;
            let challenges: Vec<String> = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            self.answer(remote, &challenges, &used).await?;
        }
    }

    /// Answers a challenge: sets the authorization later requests carry.
    async fn answer(
        &self,
        remote: &Remote,
        challenges: &[String],
        used: &Authorization,
    ) -> Result<(), ImageError> {
        let _one = remote.challenge.lock().await;
        // Another request answered it meanwhile.
        let now = remote
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let (Authorization::Header(a), Authorization::Header(b)) = (&now, used) {
            if a != b {
                return Ok(());
            }
        } else if matches!(
            (&now, used),
            (Authorization::Header(_), Authorization::None)
        ) {
            return Ok(());
        }
        let challenge = challenges
            .iter()
            .filter_map(|c| Challenge::parse(c))
            .min_by_key(|c| c.scheme != "bearer")
            .ok_or_else(|| {
                ImageError::Unauthorized(format!(
                    "{} asks for authentication without a challenge this client knows",
                    self.reference.host
                ))
            })?;
        let credentials = match &self.credentials {
            Some(source) => source(self.reference.host.clone()).await,
            None => None,
        };
        let header = match challenge.scheme.as_str() {
            "basic" => {
                let c = credentials.ok_or_else(|| {
                    ImageError::Unauthorized(format!(
                        "{} asks for credentials and none were given",
                        self.reference.host
                    ))
                })?;
                format!(
                    "Basic {}",
                    BASE64.encode(format!("{}:{}", c.username, c.secret).as_bytes())
                )
            }
            _ => format!(
                "Bearer {}",
                self.token(remote, &challenge, credentials.as_ref()).await?
            ),
        };
        let value = HeaderValue::from_str(&header)
            .map_err(|_| ImageError::Unauthorized("the token is not a valid header".into()))?;
        *remote.auth.lock().unwrap_or_else(|p| p.into_inner()) = Authorization::Header(value);
        Ok(())
    }

    /// A bearer token from the challenge's realm for pulling this repository.
    async fn token(
        &self,
        remote: &Remote,
        challenge: &Challenge,
        credentials: Option<&Credentials>,
    ) -> Result<String, ImageError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| ImageError::Unauthorized("a bearer challenge without a realm".into()))?;
        let scope = challenge
            .param("scope")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let mut query: Vec<(&str, &str)> = vec![("scope", &scope)];
        if let Some(service) = challenge.param("service") {
            query.push(("service", service));
        }
        let response = match credentials {
            // A refresh token alone goes by OAuth2, as containerd sends it.
            Some(c) if c.username.is_empty() => {
                let mut form = query.clone();
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", c.secret.as_str()),
                    ("client_id", "containerd-client"),
                ]);
                remote.http.post(realm).form(&form).send().await
            }
            Some(c) => {
                remote
                    .http
                    .get(realm)
                    .query(&query)
                    .basic_auth(&c.username, Some(&c.secret))
                    .send()
                    .await
            }
            None => remote.http.get(realm).query(&query).send().await,
        }
        .map_err(ImageError::http(format!("fetching a token from {realm}")))?;
        if !response.status().is_success() {
            return Err(ImageError::Unauthorized(format!(
                "token server {realm} answered {}",
                response.status()
            )));
        }
        let raw = read_limited(response, TOKEN_LIMIT, &format!("the token from {realm}")).await?;
        let body: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| {
            ImageError::Unauthorized(format!("token server {realm} answered no JSON: {e}"))
        })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ImageError::Unauthorized(format!("token server {realm} gave no token")))
    }
}

impl Remote {
    fn new(
        reference: &Reference,
        options: &RegistryOptions,
        host: &Host,
    ) -> Result<Remote, ImageError> {
        // Docker Hub's registry API is served by another host than its name.
        let registry = if reference.host == "docker.io" {
            "registry-1.docker.io"
        } else {
            &reference.host
        };
        // Loopback registries are plain http, as containerd's default hosts treat localhost,
        // unless the host is given TLS settings (containerd then tries https first).
        let explicit_tls = !host.ca.is_empty() || !host.client.is_empty() || host.skip_verify;
        let scheme = if options.plain_http || (is_loopback(registry) && !explicit_tls) {
            "http"
        } else {
            "https"
        };
        let (scheme, authority, api) = match &host.endpoint {
            Some(e) => (e.scheme.as_str(), e.authority.as_str(), e.path.as_str()),
            None => (scheme, registry, "/v2"),
        };
        let mut headers = HeaderMap::new();
        for (k, v) in options.headers.iter().chain(&host.headers) {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| ImageError::InvalidArgument(format!("header name {k:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| ImageError::InvalidArgument(format!("header value of {k}")))?;
            headers.insert(name, value);
        }
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                ImageError::InvalidArgument(format!("reading {what} {}: {e}", path.display()))
            })
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("crated/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(host.skip_verify);
        for ca in &host.ca {
            let certs =
                reqwest::Certificate::from_pem_bundle(&read(ca, "CA file")?).map_err(|e| {
                    ImageError::InvalidArgument(format!("CA file {}: {e}", ca.display()))
                })?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        // rustls presents one client certificate: the first pair given (Go's TLS picks among
        // several by the server's request, which is rare in a registry's hosts.toml).
        if let Some((cert, key)) = host.client.first() {
            let mut pem = read(cert, "client certificate")?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(read(key, "client key")?);
            }
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ImageError::InvalidArgument(format!(
                    "client certificate {} and its key: {e}",
                    cert.display()
                ))
            })?;
            http = http.identity(identity);
        }
        let http = http
            .build()
            .map_err(ImageError::http("building the http client"))?;
        // containerd names the registry to a host that is not it (a mirror).
        let query = if authority == registry {
            String::new()
        } else {
            format!("?ns={}", reference.host)
        };
        Ok(Remote {
            http,
            base: format!("{scheme}://{authority}{api}/{}", reference.repository),
            query,
            resolve: host.resolve,
            pull: host.pull,
            headers,
            auth: Mutex::new(Authorization::None),
            challenge: tokio::sync::Mutex::new(()),
        })
    }
}

fn check(desc: &Descriptor, data: &[u8]) -> Result<(), ImageError> {
    let digest = digest_of(data);
    if digest != desc.digest || data.len() as i64 != desc.size {
        return Err(ImageError::FailedPrecondition(format!(
            "fetched {} bytes with digest {digest}, expected {} bytes with digest {}",
            data.len(),
            desc.size,
            desc.digest
        )));
    }
    Ok(())
}

async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(ImageError::http(format!("reading {what}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ImageError::FailedPrecondition(format!(
                "{what} is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn status_error(status: StatusCode, what: &str) -> ImageError {
    match status {
        StatusCode::NOT_FOUND => ImageError::NotFound(what.to_owned()),
        StatusCode::FORBIDDEN => ImageError::Unauthorized(format!("{what}: access denied")),
        s => ImageError::Unavailable(format!("{what}: registry answered {s}")),
    }
}

/// One `WWW-Authenticate` challenge: a scheme and its parameters.
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut rest = rest.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let after = after.trim_start();
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            params.push((key.trim().to_lowercase(), value.to_owned()));
            rest = next.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_lowercase(),
            params,
        })
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="http://127.0.0.1:1/token",service="registry",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:1/token"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull"));
        let b = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (b.scheme.as_str(), b.param("realm")),
            ("basic", Some("Registry Realm"))
        );
    }

    #[test]
    fn loopback_hosts_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("registry.example.com:5000"));
    }
}
