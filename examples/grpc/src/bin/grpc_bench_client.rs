//! The native baseline of the gRPC benchmark: the same SayHello calls the
//! Lua side makes, from a plain tonic client on a multi-threaded tokio
//! runtime.
//!
//! Usage: grpc_bench_client TARGET N CONCURRENCY
//!
//! Makes N calls in total from CONCURRENCY tasks (1 = sequential) over one
//! channel and prints one JSON line: calls, seconds, calls per second and
//! mean microseconds per call.

use std::time::Instant;

use grpc_examples::helloworld::greeter_client::GreeterClient;
use grpc_examples::helloworld::HelloRequest;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: grpc_bench_client TARGET N CONCURRENCY";
    let target = args.next().ok_or(usage)?;
    let n: usize = args.next().ok_or(usage)?.parse()?;
    let conc: usize = args.next().ok_or(usage)?.parse()?;
    let client = GreeterClient::connect(format!("http://{target}")).await?;
    // warm up the connection
    client
        .clone()
        .say_hello(HelloRequest {
            name: "warm".into(),
        })
        .await?;
    let per_task = n / conc.max(1);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let r = c
                    .say_hello(HelloRequest {
                        name: "bench".into(),
                    })
                    .await?;
                if r.get_ref().message != "Hello bench!" {
                    return Err(tonic::Status::internal("wrong answer"));
                }
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let calls = per_task * conc.max(1);
    println!(
        "{{\"calls\": {calls}, \"seconds\": {secs:.6}, \"rate\": {:.1}, \"us_per_call\": {:.2}}}",
        calls as f64 / secs,
        secs * 1e6 / calls as f64
    );
    Ok(())
}
