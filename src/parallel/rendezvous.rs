//! Starting workers on several hosts (or as several processes on one): each process is launched
//! with its rank, the number of processes and the address of rank 0, as torchrun and MPI launchers
//! do, and the processes exchange only the NCCL unique id through that address. Everything after
//! that is NCCL's traffic.
//!
//! Environment: `CREMA_RANK` (0-based), `CREMA_WORLD_SIZE` (processes), `CREMA_MASTER_ADDR`
//! (`host` or `host:port`), `CREMA_MASTER_PORT` (default 29500), `CREMA_RENDEZVOUS_TIMEOUT`
//! (seconds, default 300).

use crate::{bail, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The port rank 0 listens on when the address names none.
pub const DEFAULT_PORT: u16 = 29500;

/// One process's place in a multi-process launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, 0-based.
    pub rank: usize,
    /// Number of processes.
    pub processes: usize,
    /// `host:port` where rank 0 listens.
    pub master: String,
    /// How long to wait for the other processes.
    pub timeout: Duration,
}

impl Launch {
    /// Reads the launch from `CREMA_*` variables; None when `CREMA_WORLD_SIZE` is unset.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Launch::from_env`], with the variables from `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some(world) = get("CREMA_WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |name: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse::<usize>()
                .map_err(|_| crate::Error::msg(format!("{name}=`{v}` is not a whole number")))
        };
        let processes = num("CREMA_WORLD_SIZE", &world)?;
        if processes == 0 {
            bail!("CREMA_WORLD_SIZE=0: give the number of processes (1 or more)");
        }
        let rank = match get("CREMA_RANK") {
            Some(r) => num("CREMA_RANK", &r)?,
            None => bail!("CREMA_WORLD_SIZE is set but CREMA_RANK is not; give each process its rank (0 to {})", processes - 1),
        };
        if rank >= processes {
            bail!("CREMA_RANK={rank} is out of range for CREMA_WORLD_SIZE={processes} (ranks are 0 to {})", processes - 1);
        }
        let addr = get("CREMA_MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = match get("CREMA_MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                crate::Error::msg(format!("CREMA_MASTER_PORT=`{p}` is not a port number"))
            })?,
            None => DEFAULT_PORT,
        };
        let master = match addr.matches(':').count() {
            0 => format!("{addr}:{port}"),
            1 => addr,                          // host:port
            _ if addr.starts_with('[') => addr, // [v6]:port
            _ => format!("[{addr}]:{port}"),    // a bare IPv6 address
        };
        let timeout = match get("CREMA_RENDEZVOUS_TIMEOUT") {
            Some(t) => Duration::from_secs(num("CREMA_RENDEZVOUS_TIMEOUT", &t)? as u64),
            None => Duration::from_secs(300),
        };
        Ok(Some(Launch {
            rank,
            processes,
            master,
            timeout,
        }))
    }
}

const MAGIC: &str = "crema-rendezvous/1";

/// Hands rank 0's `payload` (made by `make_payload`, called on rank 0 only) to every process and
/// checks that all processes run `workers` workers each. Returns the payload on every rank.
pub fn exchange(
    launch: &Launch,
    workers: usize,
    make_payload: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    if launch.processes == 1 {
        return make_payload();
    }
    if launch.rank == 0 {
        serve(launch, workers, make_payload()?)
    } else {
        fetch(launch, workers)
    }
}

fn serve(launch: &Launch, workers: usize, payload: Vec<u8>) -> Result<Vec<u8>> {
    let listener = TcpListener::bind(bind_addr(&launch.master)?).map_err(|e| {
        crate::Error::msg(format!(
            "rank 0 cannot listen on {} (CREMA_MASTER_ADDR/CREMA_MASTER_PORT): {e}",
            launch.master
        ))
    })?;
    listener.set_nonblocking(true).ok();
    let deadline = Instant::now() + launch.timeout;
    let mut seen = vec![false; launch.processes];
    seen[0] = true;
    let mut joined = 1;
    while joined < launch.processes {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = (0..launch.processes)
                        .filter(|r| !seen[*r])
                        .map(|r| r.to_string())
                        .collect();
                    bail!(
                        "rank 0 waited {} s on {} but rank(s) {} never connected; start every process with the same CREMA_MASTER_ADDR (or raise CREMA_RENDEZVOUS_TIMEOUT)",
                        launch.timeout.as_secs(),
                        launch.master,
                        missing.join(", ")
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => bail!("rank 0 accepting on {}: {e}", launch.master),
        };
        stream.set_nonblocking(false).ok();
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut reader = BufReader::new(
            stream
                .try_clone()
                .map_err(|e| crate::Error::msg(format!("rank 0: connection from {peer}: {e}")))?,
        );
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue; // not one of ours (a port scan, a stale client): ignore it
        }
        let mut out = stream;
        let hello: Vec<&str> = line.split_whitespace().collect();
        let field = |k: &str| -> Option<usize> {
            hello
                .iter()
                .find_map(|f| f.strip_prefix(k).and_then(|v| v.parse().ok()))
        };
        if hello.first() != Some(&MAGIC) {
            continue;
        }
        let (Some(rank), Some(world), Some(w)) =
            (field("rank="), field("world="), field("workers="))
        else {
            continue;
        };
        let problem = if world != launch.processes {
            Some(format!(
                "rank {rank} was started with CREMA_WORLD_SIZE={world} but rank 0 with {}",
                launch.processes
            ))
        } else if rank == 0 || rank >= launch.processes || seen[rank] {
            Some(format!(
                "two processes claim CREMA_RANK={rank}; give each process its own rank"
            ))
        } else if w != workers {
            Some(format!(
                "rank {rank} runs {w} GPU worker(s) but rank 0 runs {workers}; give every process the same number of GPUs"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let _ = writeln!(out, "error {p}");
            bail!("{p}");
        }
        writeln!(out, "ok {}", payload.len())
            .and_then(|_| out.write_all(&payload))
            .map_err(|e| crate::Error::msg(format!("rank 0 sending to rank {rank}: {e}")))?;
        seen[rank] = true;
        joined += 1;
    }
    Ok(payload)
}

fn fetch(launch: &Launch, workers: usize) -> Result<Vec<u8>> {
    let deadline = Instant::now() + launch.timeout;
    let stream = loop {
        let addrs: Vec<_> = launch
            .master
            .to_socket_addrs()
            .map_err(|e| crate::Error::msg(format!("CREMA_MASTER_ADDR `{}`: {e}", launch.master)))?
            .collect();
        let connected = addrs
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).ok());
        if let Some(s) = connected {
            break s;
        }
        if Instant::now() > deadline {
            bail!(
                "rank {} could not reach rank 0 at {} within {} s; start rank 0 (CREMA_RANK=0) with the same CREMA_MASTER_ADDR, or raise CREMA_RENDEZVOUS_TIMEOUT",
                launch.rank,
                launch.master,
                launch.timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stream.set_read_timeout(Some(launch.timeout)).ok();
    let mut out = stream
        .try_clone()
        .map_err(|e| crate::Error::msg(format!("rank {}: {e}", launch.rank)))?;
    writeln!(
        out,
        "{MAGIC} rank={} world={} workers={workers}",
        launch.rank, launch.processes
    )
    .map_err(|e| {
        crate::Error::msg(format!(
            "rank {} writing to {}: {e}",
            launch.rank, launch.master
        ))
    })?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| {
        crate::Error::msg(format!(
            "rank {} reading from {}: {e}",
            launch.rank, launch.master
        ))
    })?;
    let line = line.trim_end();
    if let Some(p) = line.strip_prefix("error ") {
        bail!("rank 0 refused rank {}: {p}", launch.rank);
    }
    let Some(len) = line
        .strip_prefix("ok ")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        bail!(
            "rank {}: {} did not answer as crema's rank 0 (got `{line}`)",
            launch.rank,
            launch.master
        );
    };
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).map_err(|e| {
        crate::Error::msg(format!(
            "rank {} reading from {}: {e}",
            launch.rank, launch.master
        ))
    })?;
    Ok(payload)
}

/// Rank 0 listens on the master address's port on every interface of that address's family (the
/// address itself may name a different host's view of rank 0's machine, e.g. through NAT).
fn bind_addr(master: &str) -> Result<String> {
    let Some((host, port)) = master.rsplit_once(':') else {
        bail!("CREMA_MASTER_ADDR `{master}` has no port");
    };
    let v6 = host.starts_with('[');
    Ok(if v6 {
        format!("[::]:{port}")
    } else {
        format!("0.0.0.0:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn launch_reads_torchrun_style_variables() {
        assert_eq!(launch(&[]).unwrap(), None);
        let l = launch(&[
            ("CREMA_WORLD_SIZE", "2"),
            ("CREMA_RANK", "1"),
            ("CREMA_MASTER_ADDR", "10.0.0.5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.rank, l.processes, l.master.as_str()),
            (1, 2, "10.0.0.5:29500")
        );
        let l = launch(&[
            ("CREMA_WORLD_SIZE", "2"),
            ("CREMA_RANK", "0"),
            ("CREMA_MASTER_ADDR", "node1:1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.master, "node1:1234");
        let e = launch(&[("CREMA_WORLD_SIZE", "2"), ("CREMA_RANK", "2")]).unwrap_err();
        assert!(
            e.to_string().contains("CREMA_RANK=2 is out of range"),
            "{e}"
        );
        let e = launch(&[("CREMA_WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("CREMA_RANK is not"), "{e}");
        let e = launch(&[("CREMA_WORLD_SIZE", "two"), ("CREMA_RANK", "0")]).unwrap_err();
        assert!(e.to_string().contains("CREMA_WORLD_SIZE=`two`"), "{e}");
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn at(rank: usize, processes: usize, port: u16) -> Launch {
        Launch {
            rank,
            processes,
            master: format!("127.0.0.1:{port}"),
            timeout: Duration::from_secs(20),
        }
    }

    #[test]
    fn every_process_gets_rank_zeros_payload() {
        let port = free_port();
        let handles: Vec<_> = (0..3)
            .rev()
            .map(|r| {
                std::thread::spawn(move || {
                    exchange(&at(r, 3, port), 2, || Ok(b"unique-id".to_vec()))
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), b"unique-id");
        }
    }

    #[test]
    fn a_mismatched_process_is_refused_with_the_reason() {
        let port = free_port();
        let root = std::thread::spawn(move || exchange(&at(0, 2, port), 2, || Ok(vec![1])));
        let e = exchange(&at(1, 2, port), 1, || unreachable!()).unwrap_err();
        assert!(
            e.to_string()
                .contains("runs 1 GPU worker(s) but rank 0 runs 2"),
            "{e}"
        );
        let e = root.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("rank 1 runs 1"), "{e}");
    }

    #[test]
    fn a_missing_rank_zero_times_out_with_a_hint() {
        let mut l = at(1, 2, free_port());
        l.timeout = Duration::from_millis(300);
        let e = exchange(&l, 1, || unreachable!()).unwrap_err();
        assert!(e.to_string().contains("could not reach rank 0"), "{e}");
    }
}
