//! Secrets Manager and STS with IAM enforced, for the workload-identity
//! tests: a moto server of its own (tests/moto/iam_setup.py creates the
//! users, roles, policies and secrets, then turns enforcement on), behind a
//! proxy that keeps the audit trail CloudTrail would: each
//! `AssumeRoleWithWebIdentity` with the token's audience and subject and the
//! access key it issued, and each Secrets Manager call with the principal
//! whose key signed it.
//!
//! AWS takes `AssumeRoleWithWebIdentity` unsigned (the token is the proof,
//! checked against the cluster's OIDC issuer). moto, once IAM is enforced,
//! wants every call signed; the proxy plays AWS's side here: it reads the
//! token's claims and marks the call as one of moto's public operations.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::{TestBed, component, free_port, injector, spawn};

/// One `AssumeRoleWithWebIdentity`, as STS saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub role: String,
    pub session: String,
    pub audience: Vec<String>,
    pub subject: String,
    /// The access key issued; `None` if refused.
    pub key: Option<String>,
}

/// One Secrets Manager call and who signed it.
#[derive(Debug, Clone)]
pub struct Read {
    /// `role/<name>/<session>`, `own` (sm-injector's user) or `unknown`.
    pub principal: String,
    pub action: String,
    pub secrets: Vec<String>,
    pub status: u16,
}

#[derive(Debug, Default, Clone)]
pub struct Audit {
    pub exchanges: Vec<Exchange>,
    pub reads: Vec<Read>,
}

pub struct IamAws {
    /// The endpoint of both Secrets Manager and STS.
    pub url: String,
    /// sm-injector's own user: an access key id and secret, no policy.
    pub own: (String, String),
    /// A user allowed everything, to change secrets with.
    pub admin: (String, String),
    pub account: String,
    pub audit: Arc<Mutex<Audit>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IamAws {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IamAws {
    /// A moto of its own with `secrets` (name, value) and the roles of
    /// tests/moto/iam_setup.py, IAM enforced, behind the auditing proxy.
    pub async fn start(bed: &TestBed, secrets: &[(&str, &str)]) -> IamAws {
        let server = component(
            "SM_INJECTOR_MOTO_SERVER",
            "moto_server (tests/moto/setup.sh)",
        );
        let port = free_port();
        let child = spawn(
            &bed.dir,
            &format!("moto-iam-{port}"),
            &server,
            &[
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
        );
        std::mem::forget(child);
        let start = std::time::Instant::now();
        while injector::http_get(port, "/moto-api/").await.0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto (IAM) did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let python = server.with_file_name("python3");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto/iam_setup.py");
        let out = tokio::process::Command::new(&python)
            .arg(script)
            .arg(format!("http://127.0.0.1:{port}"))
            .args(secrets.iter().map(|(n, v)| format!("{n}={v}")))
            .output()
            .await
            .expect("the moto venv's python");
        assert!(
            out.status.success(),
            "iam_setup.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let user = |who: &str| {
            (
                made[who]["id"].as_str().unwrap().to_string(),
                made[who]["secret"].as_str().unwrap().to_string(),
            )
        };
        let (own, admin) = (user("own"), user("admin"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let audit = Arc::new(Mutex::new(Audit::default()));
        let upstream = format!("127.0.0.1:{port}");
        let task = {
            let (audit, own_id) = (audit.clone(), own.0.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (audit, own_id, upstream) =
                        (audit.clone(), own_id.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (audit, own_id, upstream) =
                                (audit.clone(), own_id.clone(), upstream.clone());
                            async move {
                                Ok::<_, Infallible>(answer(req, &upstream, &audit, &own_id).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            })
        };
        IamAws {
            url,
            own,
            admin,
            account: made["account"].as_str().unwrap().to_string(),
            audit,
            task,
        }
    }

    pub fn role_arn(&self, name: &str) -> String {
        format!("arn:aws:iam::{}:role/{name}", self.account)
    }

    /// A Secrets Manager client signed as `who` (an access key id and secret).
    pub fn secrets_manager(&self, who: &(String, String)) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::from_conf(self.secrets_manager_config(who))
    }

    /// The configuration of [`Self::secrets_manager`].
    pub fn secrets_manager_config(&self, who: &(String, String)) -> aws_sdk_secretsmanager::Config {
        aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                &who.0, &who.1, None, None, "iam-test",
            ))
            .build()
    }

    /// An STS client for the proxy (workload identities' exchanges).
    pub fn sts(&self) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::Config::builder()
                .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
                .region(aws_sdk_sts::config::Region::new("us-east-1"))
                .endpoint_url(&self.url)
                .build(),
        )
    }

    pub fn audit(&self) -> Audit {
        self.audit.lock().unwrap().clone()
    }
}

/// A form body's fields, percent-decoded.
fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The claims of a JWT, unverified: (audiences, subject).
fn claims(token: &str) -> (Vec<String>, String) {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let audience = match &v["aud"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => vec![],
    };
    (audience, v["sub"].as_str().unwrap_or_default().to_string())
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

async fn answer(
    req: Request<Incoming>,
    upstream: &str,
    audit: &Mutex<Audit>,
    own_id: &str,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let fields = form(&body);
    if fields.get("Action").map(String::as_str) == Some("AssumeRoleWithWebIdentity") {
        let token = fields.get("WebIdentityToken").cloned().unwrap_or_default();
        let (audience, subject) = claims(&token);
        // Routed to STS, and let through as AWS lets this call through.
        parts.headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=WEBIDENTITY/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0"
                .parse()
                .unwrap(),
        );
        parts.headers.insert(
            "x-amz-target",
            "AWSCognitoIdentityService.GetId".parse().unwrap(),
        );
        let out = forward(parts, body, upstream).await;
        let text = String::from_utf8_lossy(out.body_bytes()).into_owned();
        audit.lock().unwrap().exchanges.push(Exchange {
            role: fields.get("RoleArn").cloned().unwrap_or_default(),
            session: fields.get("RoleSessionName").cloned().unwrap_or_default(),
            audience,
            subject,
            key: between(&text, "<AccessKeyId>", "</AccessKeyId>").map(String::from),
        });
        return out.response;
    }
    let key = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| between(a, "Credential=", "/"))
        .unwrap_or_default()
        .to_string();
    let action = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let secrets = match (&json["SecretIdList"], &json["SecretId"]) {
        (serde_json::Value::Array(a), _) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        (_, serde_json::Value::String(s)) => vec![s.clone()],
        _ => vec![],
    };
    let mut out = forward(parts, body, upstream).await;
    let status = out.response.status();
    let text = String::from_utf8_lossy(&out.body).into_owned();
    if !status.is_success()
        && let (Some(code), Some(message)) = (
            between(&text, "<Code>", "</Code>"),
            between(&text, "<Message>", "</Message>"),
        )
    {
        // moto answers its IAM refusals in XML whatever the protocol; AWS
        // answers a JSON-protocol call (Secrets Manager) in JSON.
        let kind = if code == "AccessDenied" {
            "AccessDeniedException"
        } else {
            code
        };
        let json = serde_json::json!({"__type": kind, "Message": message}).to_string();
        out.response = Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", kind)
            .body(Full::new(Bytes::from(json)))
            .unwrap();
    }
    let mut audit = audit.lock().unwrap();
    let principal = if key == own_id {
        "own".to_string()
    } else {
        audit
            .exchanges
            .iter()
            .find(|e| e.key.as_deref() == Some(key.as_str()))
            .map(|e| {
                let role = e.role.rsplit('/').next().unwrap_or_default();
                format!("role/{role}/{}", e.session)
            })
            .unwrap_or_else(|| "unknown".into())
    };
    audit.reads.push(Read {
        principal,
        action,
        secrets,
        status: out.response.status().as_u16(),
    });
    out.response
}

struct Forwarded {
    response: Response<Full<Bytes>>,
    body: Bytes,
}

impl Forwarded {
    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

async fn forward(parts: hyper::http::request::Parts, body: Bytes, upstream: &str) -> Forwarded {
    let tcp = tokio::net::TcpStream::connect(upstream).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let out = send
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .unwrap();
    let (parts, body) = out.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Forwarded {
        response: Response::from_parts(parts, Full::new(body.clone())),
        body,
    }
}
