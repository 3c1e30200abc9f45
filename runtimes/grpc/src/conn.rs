//! Connections: `grpc.connect` opens a handle on a tonic channel.
//!
//! Channels are cached per process by everything that shapes the transport
//! (target, host, TLS material, connect timeout), so connecting again to
//! the same place reuses the HTTP/2 connection; a handle adds its own
//! default deadline and metadata. Closing a handle (or its GC) never tears
//! down a channel others may share. A channel reconnects by itself when the
//! server comes back (calls meanwhile fail with UNAVAILABLE).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{chain, Error};

/// What Lua's `grpc.connect(target, opts)` sends.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConnectOpts {
    pub target: String,
    pub host: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub priv_key: Option<String>,
    /// seconds
    pub connect_timeout: Option<f64>,
    /// default deadline of each call, seconds
    pub timeout: Option<f64>,
    /// default metadata of each call
    pub metadata: Option<HashMap<String, String>>,
}

/// An open handle.
pub struct Conn {
    pub channel: Channel,
    pub timeout: Option<Duration>,
    pub metadata: MetadataMap,
}

#[derive(Default)]
struct Registry {
    channels: HashMap<String, Channel>,
    conns: HashMap<u64, Arc<Conn>>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The longest timeout or deadline taken, in seconds (a year): anything
/// longer is a mistake (math.huge, 1e300), and durations that large make
/// timers and the grpc-timeout header overflow.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// A timeout in seconds: more than 0 (rounded up to 1 ms), at most
/// [`MAX_SECONDS`]; NaN and infinities are refused.
pub fn seconds(v: Option<f64>, what: &str) -> Result<Option<Duration>, Error> {
    match v {
        None => Ok(None),
        Some(s) if s > 0.0 && s <= MAX_SECONDS as f64 => Ok(Some(
            Duration::from_secs_f64(s).max(Duration::from_millis(1)),
        )),
        Some(s) => Err(Error::Request(format!(
            "{what} must be a number of seconds above 0 and at most {MAX_SECONDS} (a year), got {s}"
        ))),
    }
}

/// The URI of a target: "host:port", "[::1]:port" or a full URI.
fn uri(target: &str, tls: bool) -> String {
    if target.contains("://") {
        target.to_string()
    } else if tls {
        format!("https://{target}")
    } else {
        format!("http://{target}")
    }
}

fn endpoint(o: &ConnectOpts) -> Result<Endpoint, Error> {
    let tls_material = o.ca.is_some() || o.cert.is_some() || o.priv_key.is_some();
    let uri = uri(&o.target, tls_material);
    let bad = |reason: String| Error::BadTarget {
        target: o.target.clone(),
        reason,
    };
    let mut ep = Endpoint::from_shared(uri.clone())
        .map_err(|e| bad(chain(&e)))?
        .tcp_nodelay(true)
        .connect_timeout(
            seconds(o.connect_timeout, "opts.connect_timeout")?.unwrap_or(Duration::from_secs(10)),
        );
    if let Some(host) = &o.host {
        if !uri.starts_with("https://") {
            let origin = format!("http://{host}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| bad(format!("opts.host: {e}")))?;
            ep = ep.origin(origin);
        }
    }
    if uri.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &o.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        match (&o.cert, &o.priv_key) {
            (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(cert, key)),
            (None, None) => {}
            _ => {
                return Err(Error::Tls {
                    target: o.target.clone(),
                    reason: "opts.cert and opts.priv_key go together (mTLS)".into(),
                })
            }
        }
        if let Some(host) = &o.host {
            tls = tls.domain_name(host.clone());
        }
        ep = ep.tls_config(tls).map_err(|e| Error::Tls {
            target: o.target.clone(),
            reason: chain(&e),
        })?;
    }
    Ok(ep)
}

fn channel_key(o: &ConnectOpts) -> String {
    format!(
        "{}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}",
        o.target, o.host, o.ca, o.cert, o.priv_key, o.connect_timeout
    )
}

/// Opens a handle; connects first unless a channel to the same place is
/// cached. Returns the handle's id.
pub async fn connect(o: ConnectOpts) -> Result<u64, Error> {
    let timeout = seconds(o.timeout, "opts.timeout")?;
    let mut metadata = MetadataMap::new();
    for (k, v) in o.metadata.iter().flatten() {
        crate::metadata::insert(&mut metadata, k, v)?;
    }
    let key = channel_key(&o);
    let cached = lock().channels.get(&key).cloned();
    let channel = match cached {
        Some(c) => c,
        None => {
            let ep = endpoint(&o)?;
            let c = ep.connect().await.map_err(|e| {
                Error::Status(tonic::Status::unavailable(format!(
                    "cannot connect to {}: {}",
                    o.target,
                    chain(&e)
                )))
            })?;
            lock().channels.entry(key).or_insert(c).clone()
        }
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock().conns.insert(
        id,
        Arc::new(Conn {
            channel,
            timeout,
            metadata,
        }),
    );
    Ok(id)
}

/// The handle `id`, if open.
pub fn get(id: u64) -> Result<Arc<Conn>, Error> {
    lock()
        .conns
        .get(&id)
        .cloned()
        .ok_or(Error::NoConnection(id))
}

/// Closes the handle; true if it was open.
pub fn close(id: u64) -> bool {
    lock().conns.remove(&id).is_some()
}

/// Open handles.
pub fn count() -> usize {
    lock().conns.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded_and_never_panic() {
        let ms = |v: f64| seconds(Some(v), "t").map(|d| d.map(|d| d.as_millis()));
        assert_eq!(ms(2.5).unwrap(), Some(2500));
        assert_eq!(ms(1e-300).unwrap(), Some(1));
        assert_eq!(
            ms(MAX_SECONDS as f64).unwrap(),
            Some(MAX_SECONDS as u128 * 1000)
        );
        for bad in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            3.2e7,
        ] {
            let e = ms(bad).err().unwrap().to_string();
            assert!(e.contains("t must be a number of seconds above 0"), "{e}");
        }
        assert!(seconds(None, "t").unwrap().is_none());
    }
}
