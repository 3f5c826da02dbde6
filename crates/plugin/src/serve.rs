//! The plugin side of the protocol, for plugins written in Rust: [`serve`] reads requests
//! from stdin, hands each to a [`Provider`] (several at once, up to the declared
//! concurrency), and writes the replies to stdout. A Rust plugin is a `main` that builds
//! its [`Hello`] and calls `serve` with a function that makes its provider from the
//! `configure` settings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clusterform_provider::{
    CreateRequest, DeleteRequest, Ownership, Provider, ProviderConfig, ProviderError, ReadRequest,
    UpdateRequest,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::protocol::{ErrorCode, Hello, WireError, WireObject};

/// Makes the provider from the `configure` settings and the cluster file's folder.
pub type Configure =
    Box<dyn Fn(&ProviderConfig, &std::path::Path) -> Result<Configured, String> + Send + Sync>;

/// A configured provider, with what its configuration tells the host.
pub struct Configured {
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// The longest one call may take with these settings (a create that waits for a
    /// machine); the host's per-call timeout is at least this unless the user set one.
    pub call_timeout: Option<std::time::Duration>,
}

impl From<Arc<dyn Provider>> for Configured {
    fn from(provider: Arc<dyn Provider>) -> Self {
        Configured {
            provider,
            call_timeout: None,
        }
    }
}

/// The protocol error for a provider error.
pub fn wire_error(e: &ProviderError) -> WireError {
    let (code, retry_after_ms) = match e {
        ProviderError::Transient {
            retry_after: Some(d),
            ..
        } => (ErrorCode::Throttled, Some(d.as_millis() as u64)),
        ProviderError::Transient { .. } => (ErrorCode::Retryable, None),
        ProviderError::Permanent(_) => (ErrorCode::Final, None),
        ProviderError::Ambiguous(_) => (ErrorCode::UnknownOutcome, None),
        ProviderError::NotFound(_) => (ErrorCode::NotFound, None),
        ProviderError::Config(_) => (ErrorCode::Config, None),
    };
    let message = match e {
        ProviderError::Transient { message, .. } => message.clone(),
        ProviderError::Permanent(m)
        | ProviderError::Ambiguous(m)
        | ProviderError::NotFound(m)
        | ProviderError::Config(m) => m.clone(),
    };
    WireError {
        code,
        message,
        retry_after_ms,
    }
}

fn final_error(message: impl Into<String>) -> WireError {
    WireError {
        code: ErrorCode::Final,
        message: message.into(),
        retry_after_ms: None,
    }
}

#[derive(Deserialize)]
struct CreateParams {
    kind: String,
    attrs: clusterform_core::Attrs,
    tags: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ConfigureParams {
    #[serde(default)]
    settings: ProviderConfig,
    base_dir: PathBuf,
}

fn parse<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, WireError> {
    T::deserialize(params).map_err(|e| final_error(format!("bad params: {e}")))
}

fn object(o: &clusterform_provider::Object) -> Value {
    json!(WireObject::from_object(o))
}

/// Answer one call.
async fn call(p: &dyn Provider, method: &str, params: &Value) -> Result<Value, WireError> {
    let we = |e: ProviderError| wire_error(&e);
    Ok(match method {
        "read" => {
            let r: ReadRequest = parse(params)?;
            json!({"object": p.read(&r).await.map_err(we)?.as_ref().map(object)})
        }
        "read_batch" => {
            #[derive(Deserialize)]
            struct Batch {
                requests: Vec<ReadRequest>,
            }
            let b: Batch = parse(params)?;
            let results: Vec<Value> = p
                .read_batch(&b.requests)
                .await
                .into_iter()
                .map(|r| match r {
                    Ok(o) => json!({"object": o.as_ref().map(object)}),
                    Err(e) => json!({"error": wire_error(&e)}),
                })
                .collect();
            json!({ "results": results })
        }
        "find_by_key" => {
            #[derive(Deserialize)]
            struct Key {
                kind: String,
                key: String,
            }
            let k: Key = parse(params)?;
            json!({"object": p.find_by_key(&k.kind, &k.key).await.map_err(we)?.as_ref().map(object)})
        }
        "list_cluster" => {
            #[derive(Deserialize)]
            struct C {
                cluster: String,
            }
            let c: C = parse(params)?;
            let all = p.list_cluster(&c.cluster).await.map_err(we)?;
            json!({"objects": all.iter().map(object).collect::<Vec<_>>()})
        }
        "list_owned" => {
            let all = p.list_owned().await.map_err(we)?;
            json!({"objects": all.iter().map(object).collect::<Vec<_>>()})
        }
        "create" => {
            let c: CreateParams = parse(params)?;
            let owner = Ownership::from_tags(c.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .ok_or_else(|| final_error("`tags` lack the ownership tags"))?;
            let req = CreateRequest {
                kind: c.kind,
                attrs: c.attrs,
                owner,
            };
            json!({"object": object(&p.create(&req).await.map_err(we)?)})
        }
        "update" => {
            let u: UpdateRequest = parse(params)?;
            json!({"object": object(&p.update(&u).await.map_err(we)?)})
        }
        "delete" => {
            let d: DeleteRequest = parse(params)?;
            p.delete(&d).await.map_err(we)?;
            json!({})
        }
        "import" => {
            #[derive(Deserialize)]
            struct I {
                kind: String,
                id: String,
            }
            let i: I = parse(params)?;
            json!({"object": object(&p.import(&i.kind, &i.id).await.map_err(we)?)})
        }
        other => return Err(final_error(format!("unknown method `{other}`"))),
    })
}

/// Send the answer to request `id`.
fn reply(tx: &mpsc::UnboundedSender<String>, id: u64, r: Result<Value, WireError>) {
    let msg = match r {
        Ok(v) => json!({"id": id, "result": v}),
        Err(e) => json!({"id": id, "error": e}),
    };
    let _ = tx.send(msg.to_string());
}

/// Serve the protocol on stdin/stdout until stdin closes or `shutdown`.
pub async fn serve(hello: Hello, configure: Configure) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            if out.write_all(line.as_bytes()).await.is_err()
                || out.write_all(b"\n").await.is_err()
                || out.flush().await.is_err()
            {
                break;
            }
        }
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(hello.concurrency.max(1)));
    let mut provider: Option<Arc<dyn Provider>> = None;
    // Calls in flight: registered before their task starts (so that a fast answer is
    // never lost), their abort handle added once spawned.
    let running: Arc<Mutex<HashMap<u64, Option<tokio::task::AbortHandle>>>> = Arc::default();
    let mut graceful = false;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let method = msg["method"].as_str().unwrap_or_default().to_string();
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let Some(id) = msg["id"].as_u64() else {
            if method == "cancel"
                && let Some(id) = params["id"].as_u64()
                && let Some(h) = running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id)
            {
                if let Some(h) = h {
                    h.abort();
                }
                reply(
                    &tx,
                    id,
                    Err(WireError {
                        code: ErrorCode::UnknownOutcome,
                        message: "cancelled".into(),
                        retry_after_ms: None,
                    }),
                );
            }
            continue;
        };
        match method.as_str() {
            "handshake" => reply(&tx, id, Ok(json!(hello))),
            "configure" => {
                let r = parse::<ConfigureParams>(&params).and_then(|c| {
                    configure(&c.settings, &c.base_dir).map_err(|m| WireError {
                        code: ErrorCode::Config,
                        message: m,
                        retry_after_ms: None,
                    })
                });
                match r {
                    Ok(c) => {
                        let mut answer = json!({ "runs_machines": c.provider.runs_machines() });
                        if let Some(t) = c.call_timeout {
                            answer["call_timeout_ms"] = json!(t.as_millis() as u64);
                        }
                        provider = Some(c.provider);
                        reply(&tx, id, Ok(answer));
                    }
                    Err(e) => reply(&tx, id, Err(e)),
                }
            }
            "shutdown" => {
                reply(&tx, id, Ok(json!({})));
                graceful = true;
                break;
            }
            _ => {
                let Some(p) = provider.clone() else {
                    reply(&tx, id, Err(final_error("`configure` must come first")));
                    continue;
                };
                running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, None);
                let (tx, permits, running2) =
                    (tx.clone(), Arc::clone(&permits), Arc::clone(&running));
                let task = tokio::spawn(async move {
                    let _permit = permits.acquire().await;
                    let r = call(p.as_ref(), &method, &params).await;
                    let still = running2
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id)
                        .is_some();
                    if still {
                        reply(&tx, id, r);
                    }
                });
                if let Some(slot) = running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_mut(&id)
                {
                    *slot = Some(task.abort_handle());
                }
            }
        }
    }
    // stdin closed with calls in flight: clusterform is gone (killed), nobody reads their
    // answers, and a create finished now could race the next run's lookup by op tag.
    // Stop them where they are; what was already sent is the next run's to resolve.
    if !graceful {
        for h in running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .filter_map(|(_, h)| h)
        {
            h.abort();
        }
    }
    // After `shutdown`, let the calls in flight answer, then stop writing.
    for _ in 0..600 {
        if running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
