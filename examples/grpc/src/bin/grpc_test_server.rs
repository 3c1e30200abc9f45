//! The gRPC server the tests, the demo and the benchmark call: helloworld's
//! Greeter, routeguide (all four kinds of call), the echo service and the
//! test probe (every field type, chosen status codes, sleeps, metadata,
//! slow streams, and how tagged calls ended: finished or cancelled by the
//! client), in plaintext, TLS or mTLS.
//!
//! Usage: grpc_test_server [--listen ADDR] [--tls DIR [--mtls]] [--while-exists PATH]
//!
//! ADDR defaults to 127.0.0.1:0; the bound address is printed on stdout as
//! `listening on ADDR`. `--tls DIR` serves with DIR/server.pem and
//! DIR/server.key (see grpc_certs); `--mtls` also requires a client
//! certificate signed by DIR/ca.pem. `--while-exists PATH` stops the
//! server once PATH is gone (the demo ties it to its staging folder).

use std::collections::HashMap;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grpc_examples::echo::echo_server::{Echo, EchoServer};
use grpc_examples::echo::{EchoRequest, EchoResponse};
use grpc_examples::helloworld::greeter_server::{Greeter, GreeterServer};
use grpc_examples::helloworld::{HelloReply, HelloRequest};
use grpc_examples::probe::probe_server::{Probe, ProbeServer};
use grpc_examples::probe::{
    EndedReply, EndedRequest, Everything, FailRequest, MetadataReply, SleepRequest, Tick,
    TickRequest,
};
use grpc_examples::routeguide::route_guide_server::{RouteGuide, RouteGuideServer};
use grpc_examples::routeguide::{Feature, Point, Rectangle, RouteNote, RouteSummary};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn channel_stream<T: Send + 'static>() -> (mpsc::Sender<Result<T, Status>>, BoxStream<T>) {
    let (tx, rx) = mpsc::channel(16);
    (tx, Box::pin(ReceiverStream::new(rx)))
}

struct Greeting;

#[tonic::async_trait]
impl Greeter for Greeting {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let name = req.into_inner().name;
        Ok(Response::new(HelloReply {
            message: format!("Hello {name}!"),
        }))
    }
}

/// routeguide's features: a fixed 5x5 grid, named by position.
fn features() -> Vec<Feature> {
    let mut out = Vec::new();
    for i in 0..5 {
        for j in 0..5 {
            out.push(Feature {
                name: format!("feature-{i}-{j}"),
                location: Some(Point {
                    latitude: 400_000_000 + i * 5_000_000,
                    longitude: -750_000_000 + j * 5_000_000,
                }),
            });
        }
    }
    out
}

fn in_range(p: &Point, r: &Rectangle) -> bool {
    let (lo, hi) = (r.lo.unwrap_or_default(), r.hi.unwrap_or_default());
    let (left, right) = (
        lo.longitude.min(hi.longitude),
        lo.longitude.max(hi.longitude),
    );
    let (bottom, top) = (lo.latitude.min(hi.latitude), lo.latitude.max(hi.latitude));
    p.longitude >= left && p.longitude <= right && p.latitude >= bottom && p.latitude <= top
}

struct Routes {
    features: Vec<Feature>,
}

#[tonic::async_trait]
impl RouteGuide for Routes {
    async fn get_feature(&self, req: Request<Point>) -> Result<Response<Feature>, Status> {
        let p = req.into_inner();
        let found = self.features.iter().find(|f| f.location == Some(p));
        Ok(Response::new(found.cloned().unwrap_or(Feature {
            name: String::new(),
            location: Some(p),
        })))
    }

    type ListFeaturesStream = BoxStream<Feature>;

    async fn list_features(
        &self,
        req: Request<Rectangle>,
    ) -> Result<Response<Self::ListFeaturesStream>, Status> {
        let r = req.into_inner();
        let found: Vec<_> = self
            .features
            .iter()
            .filter(|f| f.location.as_ref().is_some_and(|p| in_range(p, &r)))
            .cloned()
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(found))))
    }

    async fn record_route(
        &self,
        req: Request<Streaming<Point>>,
    ) -> Result<Response<RouteSummary>, Status> {
        let mut points = req.into_inner();
        let mut summary = RouteSummary::default();
        let mut last: Option<Point> = None;
        while let Some(p) = points.next().await {
            let p = p?;
            summary.point_count += 1;
            if self.features.iter().any(|f| f.location == Some(p)) {
                summary.feature_count += 1;
            }
            if let Some(l) = last {
                summary.distance += (l.latitude - p.latitude).abs() / 1000
                    + (l.longitude - p.longitude).abs() / 1000;
            }
            last = Some(p);
        }
        Ok(Response::new(summary))
    }

    type RouteChatStream = BoxStream<RouteNote>;

    async fn route_chat(
        &self,
        req: Request<Streaming<RouteNote>>,
    ) -> Result<Response<Self::RouteChatStream>, Status> {
        let mut notes = req.into_inner();
        let (tx, out) = channel_stream();
        tokio::spawn(async move {
            while let Some(note) = notes.next().await {
                let reply = note.map(|n| RouteNote {
                    location: n.location,
                    message: format!("echo: {}", n.message),
                });
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(out))
    }
}

struct Echoes;

#[tonic::async_trait]
impl Echo for Echoes {
    async fn unary_echo(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let message = req.into_inner().message;
        Ok(Response::new(EchoResponse { message }))
    }

    type ServerStreamingEchoStream = BoxStream<EchoResponse>;

    async fn server_streaming_echo(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamingEchoStream>, Status> {
        let message = req.into_inner().message;
        let replies: Vec<_> = (0..3)
            .map(|i| {
                Ok(EchoResponse {
                    message: format!("{message} {i}"),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn client_streaming_echo(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        let mut all = Vec::new();
        let mut s = req.into_inner();
        while let Some(r) = s.next().await {
            all.push(r?.message);
        }
        Ok(Response::new(EchoResponse {
            message: all.join(","),
        }))
    }

    type BidirectionalStreamingEchoStream = BoxStream<EchoResponse>;

    async fn bidirectional_streaming_echo(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidirectionalStreamingEchoStream>, Status> {
        let s = req.into_inner();
        Ok(Response::new(Box::pin(
            s.map(|r| r.map(|r| EchoResponse { message: r.message })),
        )))
    }
}

/// How the tagged Sleep and Ticks calls ended, by tag.
#[derive(Clone, Default)]
struct Endings(Arc<Mutex<HashMap<String, EndedReply>>>);

impl Endings {
    fn update(&self, tag: &str, f: impl FnOnce(&mut EndedReply)) {
        if !tag.is_empty() {
            f(self.0.lock().unwrap().entry(tag.to_string()).or_default());
        }
    }

    /// Counts a tagged call as started; the guard counts how it ends.
    fn start(&self, tag: String) -> Ending {
        self.update(&tag, |e| e.started += 1);
        Ending {
            endings: self.clone(),
            tag,
            finished: false,
        }
    }
}

/// Dropped before `finished` is set: the call was cancelled (tonic drops
/// a handler when its client resets the stream).
struct Ending {
    endings: Endings,
    tag: String,
    finished: bool,
}

impl Ending {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        let finished = self.finished;
        self.endings.update(&self.tag, |e| {
            if finished {
                e.finished += 1
            } else {
                e.cancelled += 1
            }
        });
    }
}

#[derive(Default)]
struct Probing {
    endings: Endings,
}

#[tonic::async_trait]
impl Probe for Probing {
    async fn echo(&self, req: Request<Everything>) -> Result<Response<Everything>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    async fn fail(&self, req: Request<FailRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let mut status = Status::with_details(Code::from_i32(r.code), r.message, r.details.into());
        status
            .metadata_mut()
            .insert("x-fail-detail", MetadataValue::from_static("detail"));
        Err(status)
    }

    async fn sleep(&self, req: Request<SleepRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let ending = self.endings.start(r.tag);
        tokio::time::sleep(Duration::from_millis(r.ms.max(0) as u64)).await;
        ending.finish();
        Ok(Response::new(()))
    }

    async fn ended(&self, req: Request<EndedRequest>) -> Result<Response<EndedReply>, Status> {
        let tag = req.into_inner().tag;
        let map = self.endings.0.lock().unwrap();
        Ok(Response::new(map.get(&tag).cloned().unwrap_or_default()))
    }

    async fn metadata(&self, req: Request<()>) -> Result<Response<MetadataReply>, Status> {
        let metadata = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or_default().to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let mut res = Response::new(MetadataReply { metadata });
        res.metadata_mut()
            .insert("x-resp-header", MetadataValue::from_static("from-server"));
        Ok(res)
    }

    type TicksStream = BoxStream<Tick>;

    async fn ticks(
        &self,
        req: Request<TickRequest>,
    ) -> Result<Response<Self::TicksStream>, Status> {
        let r = req.into_inner();
        let (tx, out) = channel_stream();
        let ending = self.endings.start(r.tag);
        tokio::spawn(async move {
            for n in 0..r.count.clamp(0, 100_000) {
                if tx.send(Ok(Tick { n })).await.is_err() {
                    return; // the client is gone: `ending` counts a cancel
                }
                // a client that goes away is seen at once, not at the next tick
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(r.interval_ms.max(0) as u64)) => {}
                    _ = tx.closed() => return,
                }
            }
            ending.finish();
        });
        Ok(Response::new(out))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut tls_dir: Option<String> = None;
    let mut mtls = false;
    let mut while_exists: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?,
            "--tls" => tls_dir = Some(args.next().ok_or("--tls needs DIR")?),
            "--mtls" => mtls = true,
            "--while-exists" => {
                while_exists = Some(args.next().ok_or("--while-exists needs PATH")?.into())
            }
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let mut builder = Server::builder();
    if let Some(dir) = &tls_dir {
        let read = |f: &str| std::fs::read(format!("{dir}/{f}"));
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read("server.pem")?, read("server.key")?));
        if mtls {
            tls = tls.client_ca_root(Certificate::from_pem(read("ca.pem")?));
        }
        builder = builder.tls_config(tls)?;
    } else if mtls {
        return Err("--mtls needs --tls DIR".into());
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    // as tonic's own listener does (its tcp_nodelay applies only to that):
    // without it, a response written while the previous one is unacked
    // waits for the client's delayed ACK, ~40 ms (two calls at once did)
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    std::io::stdout().flush()?;
    builder
        .add_service(GreeterServer::new(Greeting))
        .add_service(RouteGuideServer::new(Routes {
            features: features(),
        }))
        .add_service(EchoServer::new(Echoes))
        .add_service(ProbeServer::new(Probing::default()))
        .serve_with_incoming_shutdown(incoming, async move {
            let gone = async {
                match while_exists {
                    Some(path) => {
                        while path.exists() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = gone => {}
            }
        })
        .await?;
    Ok(())
}
