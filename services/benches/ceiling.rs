//! The ceiling of this machine for txmesh's shape of work: a server that
//! speaks the Ingress Screen stream over the same mTLS listener as the
//! ingress, with nothing behind it, so `txmesh txgen` (the same client as
//! the end-to-end benchmark) measures what the transport alone costs.
//!
//! - `echo`: each request is answered at once, one APPROVED verdict per
//!   transaction (the fields the ingress fills), no rules, no journal.
//! - `hop`: each transaction also makes one actix hop: to its account's
//!   actor (one per account, created on first use, spread over one
//!   arbiter per core), which answers the verdict.
//!
//! Usage: ceiling MODE ADDR STATE_DIR (certificates from `txmesh certs
//! init --dir STATE_DIR`; it serves as `ingress` until SIGTERM). Run by
//! `services/benches/ceiling.py`, which puts the figures beside the
//! end-to-end ones.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::{Actor, Addr, Arbiter, Context, Handler, Message};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{transport::Server, Request, Response, Status, Streaming};
use txmesh::{
    metrics::Metrics,
    net::{idle::IdleRegistry, mtls_incoming, peer_id, Admission, IdentityLimit},
};
use txmesh_proto::v1::{
    ingress_server::{Ingress, IngressServer},
    txn_result::Outcome,
    PartitionMap, PartitionMapRequest, ScreenRequest, ScreenResponse, Transaction, TxnResult,
    Verdict, VerdictStatus,
};

/// The txmesh binary's allocator, so that neither side of the ratio is
/// measured on a slower one.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Hop,
}

fn verdict(txn: &Transaction) -> TxnResult {
    TxnResult {
        transaction_id: txn.transaction_id.clone(),
        outcome: Some(Outcome::Verdict(Verdict {
            transaction_id: txn.transaction_id.clone(),
            account_id: txn.account_id.clone(),
            status: VerdictStatus::Approved as i32,
            amount_minor: txn.amount_minor,
            currency: txn.currency.clone(),
            country: txn.country.clone(),
            ..Verdict::default()
        })),
    }
}

/// One request's results, filled in by the account actors.
struct Gather {
    results: Mutex<Vec<Option<TxnResult>>>,
    left: AtomicUsize,
    request_id: u64,
    tx: mpsc::Sender<Result<ScreenResponse, Status>>,
}

impl Gather {
    fn put(&self, i: usize, result: TxnResult) {
        self.results.lock()[i] = Some(result);
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let results = std::mem::take(&mut *self.results.lock())
                .into_iter()
                .flatten()
                .collect();
            let _ = self.tx.try_send(Ok(ScreenResponse {
                results,
                request_id: self.request_id,
                ..ScreenResponse::default()
            }));
        }
    }
}

struct Screen {
    txn: Transaction,
    index: usize,
    gather: Arc<Gather>,
}

impl Message for Screen {
    type Result = ();
}

/// An account: it answers each of its transactions.
struct Account;

impl Actor for Account {
    type Context = Context<Self>;
}

impl Handler<Screen> for Account {
    type Result = ();

    fn handle(&mut self, msg: Screen, _ctx: &mut Context<Self>) {
        msg.gather.put(msg.index, verdict(&msg.txn));
    }
}

/// The accounts' actors, created on first use on an arbiter chosen by the
/// account.
struct Accounts {
    arbiters: Vec<Arbiter>,
    stripes: Vec<Mutex<HashMap<String, Addr<Account>>>>,
}

impl Accounts {
    fn new(arbiters: usize) -> Self {
        Self {
            arbiters: (0..arbiters).map(|_| Arbiter::new()).collect(),
            stripes: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn send(&self, msg: Screen) {
        let hash = msg
            .txn
            .account_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let stripe = &self.stripes[(hash % 64) as usize];
        let addr = {
            let mut map = stripe.lock();
            match map.get(&msg.txn.account_id) {
                Some(addr) => addr.clone(),
                None => {
                    let arbiter = &self.arbiters[(hash / 64) as usize % self.arbiters.len()];
                    let addr = Account::start_in_arbiter(&arbiter.handle(), |_| Account);
                    map.insert(msg.txn.account_id.clone(), addr.clone());
                    addr
                }
            }
        };
        addr.do_send(msg);
    }
}

struct Ceiling {
    mode: Mode,
    accounts: Arc<Accounts>,
}

#[tonic::async_trait]
impl Ingress for Ceiling {
    type ScreenStream = ReceiverStream<Result<ScreenResponse, Status>>;

    async fn screen(
        &self,
        request: Request<Streaming<ScreenRequest>>,
    ) -> Result<Response<Self::ScreenStream>, Status> {
        peer_id(&request)?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let (mode, accounts) = (self.mode, self.accounts.clone());
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                let txns = request.transactions;
                if mode == Mode::Echo || txns.is_empty() {
                    let response = ScreenResponse {
                        results: txns.iter().map(verdict).collect(),
                        request_id: request.request_id,
                        ..ScreenResponse::default()
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let gather = Arc::new(Gather {
                    results: Mutex::new(vec![None; txns.len()]),
                    left: AtomicUsize::new(txns.len()),
                    request_id: request.request_id,
                    tx: tx.clone(),
                });
                for (index, txn) in txns.into_iter().enumerate() {
                    let gather = gather.clone();
                    accounts.send(Screen { txn, index, gather });
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn screen_one(
        &self,
        request: Request<Transaction>,
    ) -> Result<Response<TxnResult>, Status> {
        peer_id(&request)?;
        Ok(Response::new(verdict(request.get_ref())))
    }

    async fn get_partition_map(
        &self,
        _request: Request<PartitionMapRequest>,
    ) -> Result<Response<PartitionMap>, Status> {
        Err(Status::unimplemented(
            "the ceiling server has no partitions",
        ))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [mode, addr, state] = args.as_slice() else {
        return Err("usage: ceiling echo|hop ADDR STATE_DIR".into());
    };
    let mode = match mode.as_str() {
        "echo" => Mode::Echo,
        "hop" => Mode::Hop,
        other => return Err(format!("unknown mode {other:?}: echo or hop").into()),
    };
    let addr: SocketAddr = addr.parse()?;
    let state = std::path::PathBuf::from(state);
    txmesh_certs::install_crypto_provider();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    txmesh::runtime::block_on(cores, async move {
        let certs = txmesh_certs::CertStore::open(
            &state.join("ingress"),
            txmesh_certs::DEFAULT_TRUST_DOMAIN,
        )?;
        let tls = txmesh_certs::server_config(&certs, &[txmesh_certs::ALPN_H2])?;
        let shutdown = CancellationToken::new();
        let admission = Admission {
            limit: IdentityLimit::new(1024),
            idle: IdleRegistry::new(Duration::from_secs(60)),
        };
        let metrics = Arc::new(Metrics::new(&["ceiling-grpc"]));
        let incoming = mtls_incoming(
            addr,
            tls,
            Duration::from_secs(10),
            "ceiling-grpc",
            admission,
            shutdown.clone(),
            metrics,
        )
        .await?;
        let service = Ceiling {
            mode,
            accounts: Arc::new(Accounts::new(cores)),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            txmesh::shutdown::termination().await;
            stop.cancel();
        });
        Server::builder()
            .add_service(IngressServer::new(service))
            .serve_with_incoming_shutdown(incoming.stream, async move {
                shutdown.cancelled().await;
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })??;
    Ok(())
}
