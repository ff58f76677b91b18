//! `SCALE_PPROF=<dir>`: the API server's own CPU profile
//! (`/debug/pprof/profile`, 100 samples a second) over the first
//! `SCALE_PPROF_SECONDS` (default 2) of each chunk's creations, saved as
//! `<dir>/<way>-<wave>-<n>.pb.gz`, so that where the API server spends a
//! pod's CPU can be compared way by way: `go tool pprof -top <dir>/no-op-the*`
//! merges one way's chunks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Pprof {
    dir: Option<PathBuf>,
    seconds: u64,
    taken: AtomicUsize,
}

impl Pprof {
    /// From `SCALE_PPROF` and `SCALE_PPROF_SECONDS`; off when the first is unset.
    pub fn from_env() -> Pprof {
        let dir = std::env::var_os("SCALE_PPROF").map(PathBuf::from);
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).expect("SCALE_PPROF: a directory that can be made");
        }
        let seconds = std::env::var("SCALE_PPROF_SECONDS").map_or(2, |s| {
            s.parse()
                .expect("SCALE_PPROF_SECONDS: a whole number of seconds")
        });
        Pprof {
            dir,
            seconds,
            taken: AtomicUsize::new(0),
        }
    }

    /// Starts a profile of the API server for a chunk of `way`'s `wave`; the
    /// task ends once it is saved.
    pub fn start(
        &self,
        client: &kube::Client,
        way: &str,
        wave: &str,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let dir = self.dir.as_ref()?;
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        let file = dir.join(format!("{way}-{}-{n}.pb.gz", wave.replace(' ', "-")));
        let path = format!("/debug/pprof/profile?seconds={}", self.seconds);
        let client = client.clone();
        Some(tokio::spawn(async move {
            let req = http::Request::get(path).body(vec![]).unwrap();
            let bytes = client
                .request_stream(req)
                .await
                .expect("the API server's CPU profile");
            let mut bytes = std::pin::pin!(bytes);
            let mut out = vec![];
            futures::AsyncReadExt::read_to_end(&mut bytes, &mut out)
                .await
                .expect("the API server's CPU profile, read whole");
            std::fs::write(&file, out).expect("the profile saved");
        }))
    }
}
