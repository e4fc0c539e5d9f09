//! Password hashing: argon2id for new hashes, passlib's bcrypt (`$2b$`) still verified so that
//! the seed's users keep their passwords, and a bounded pool of threads that does the work off
//! the async runtimes.
//!
//! A wrong password is `Ok(false)`; `Err` means the stored hash or the machinery is broken.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use std::cell::RefCell;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::config::PasswordConfig;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPolicy {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashPolicy {
    /// OWASP's minimum for argon2id (m=19 MiB, t=2, p=1); also argon2's default.
    pub const OWASP_MINIMUM: HashPolicy = HashPolicy {
        memory_kib: crate::config::ARGON2_OWASP_MINIMUM.0,
        iterations: crate::config::ARGON2_OWASP_MINIMUM.1,
        parallelism: crate::config::ARGON2_OWASP_MINIMUM.2,
    };

    /// For unit tests only: fast, and far too weak for anything else.
    pub const DANGER_TEST_MINIMUM: HashPolicy = HashPolicy {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    pub fn meets_owasp_minimum(&self) -> bool {
        let m = Self::OWASP_MINIMUM;
        self.memory_kib >= m.memory_kib
            && self.iterations >= m.iterations
            && self.parallelism >= m.parallelism
    }

    pub fn check(&self) -> Result<(), String> {
        self.params().map(|_| ()).map_err(|e| e.to_string())
    }

    fn params(&self) -> Result<Params, argon2::Error> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
    }

    fn argon2(&self) -> Result<Argon2<'static>, PasswordError> {
        let params = self
            .params()
            .map_err(|e| PasswordError::Hash(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// A PHC-format argon2id hash with a random salt.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let err = |e: &dyn std::fmt::Display| PasswordError::Hash(e.to_string());
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt
            .as_salt()
            .decode_b64(&mut salt_buf)
            .map_err(|e| err(&e))?;
        let mut out = [0u8; 32];
        argon2_with_thread_memory(&self.argon2()?, password.as_bytes(), salt_bytes, &mut out)?;
        let params = self.params().map_err(|e| err(&e))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|e| err(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| err(&e))?),
        };
        Ok(phc.to_string())
    }

    /// True when `stored` should be replaced by a hash made with this policy.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        match Scheme::of(stored) {
            Scheme::Bcrypt => true,
            Scheme::Argon2 => match PasswordHash::new(stored) {
                Ok(parsed) => {
                    parsed.algorithm.as_str() != "argon2id"
                        || parsed.version != Some(Version::V0x13.into())
                        || Params::try_from(&parsed)
                            .map(|p| {
                                p.m_cost() != self.memory_kib
                                    || p.t_cost() != self.iterations
                                    || p.p_cost() != self.parallelism
                            })
                            .unwrap_or(true)
                }
                Err(_) => true,
            },
            Scheme::Unknown => true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("stored password hash is not in a known format")]
    UnknownScheme,
    #[error("stored password hash is malformed: {0}")]
    Malformed(String),
    /// The hashing queue is full; the caller should answer 503 and let the client retry.
    #[error("password hashing queue is full")]
    Busy,
    #[error("password hashing worker is gone")]
    WorkerGone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Argon2,
    Bcrypt,
    Unknown,
}

impl Scheme {
    fn of(stored: &str) -> Scheme {
        if stored.starts_with("$argon2") {
            Scheme::Argon2
        } else if ["$2a$", "$2b$", "$2y$", "$2x$"]
            .iter()
            .any(|p| stored.starts_with(p))
        {
            Scheme::Bcrypt
        } else {
            Scheme::Unknown
        }
    }
}

/// Checks `password` against a stored hash of either scheme. bcrypt truncates at 72 bytes, as
/// passlib did when it made those hashes, so long legacy passwords still verify.
pub fn verify(password: &str, stored: &str) -> Result<bool, PasswordError> {
    match Scheme::of(stored) {
        Scheme::Argon2 => verify_argon2(password, stored),
        Scheme::Bcrypt => {
            bcrypt::verify(password, stored).map_err(|e| PasswordError::Malformed(e.to_string()))
        }
        Scheme::Unknown => Err(PasswordError::UnknownScheme),
    }
}

/// The largest argon2 memory a stored hash may ask for (256 MiB); more is treated as malformed.
const MAX_ARGON2_BLOCKS: usize = 256 * 1024;

thread_local! {
    /// Each hashing thread's argon2 working memory, allocated once and reused. Allocating
    /// 19 MiB per hash made glibc keep hundreds of MiB resident under a login flood.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn argon2_with_thread_memory(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), PasswordError> {
    let need = argon.params().block_count();
    if need > MAX_ARGON2_BLOCKS {
        return Err(PasswordError::Malformed(format!(
            "argon2 memory of {need} KiB"
        )));
    }
    ARGON2_MEMORY.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < need {
            blocks.resize(need, Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..need])
            .map_err(|e| PasswordError::Malformed(e.to_string()))
    })
}

/// Verifies against a PHC argon2 string with the parameters it carries, in constant time.
fn verify_argon2(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let malformed = |e: &dyn std::fmt::Display| PasswordError::Malformed(e.to_string());
    let parsed = PasswordHash::new(stored).map_err(|e| malformed(&e))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| malformed(&e))?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| malformed(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| malformed(&e))?;
    let expected = parsed.hash.ok_or_else(|| malformed(&"no hash"))?;
    let salt = parsed.salt.ok_or_else(|| malformed(&"no salt"))?;
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| malformed(&e))?;
    let mut out = vec![0u8; expected.len()];
    argon2_with_thread_memory(
        &Argon2::new(algorithm, version, params),
        password.as_bytes(),
        salt,
        &mut out,
    )?;
    let diff = out
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok(diff == 0 && out.len() == expected.len())
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The hashing threads' niceness. A login flood keeps every hashing thread busy; at a lower
/// priority they yield the cores to the proxy and `/health` threads whenever those have work,
/// so proxied traffic of signed-in users degrades less (hashing is the work that can wait:
/// its queue is bounded and answers 503 when full).
pub const HASH_THREAD_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority (Linux keeps a nice value per thread).
/// Failure is harmless: the thread then runs at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` and `setpriority` take plain integers and touch no memory of ours.
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HASH_THREAD_NICE)
        };
        if result != 0 {
            tracing::debug!("could not lower the hashing thread's priority");
        }
    }
}

/// A fixed set of threads that hash and verify, fed by a bounded queue. When the queue is full
/// the caller gets [`PasswordError::Busy`] at once instead of piling up memory and latency.
pub struct HashPool {
    sender: mpsc::SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl HashPool {
    pub fn new(workers: usize, queue: usize) -> std::io::Result<HashPool> {
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("sg-hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = {
                            let Ok(guard) = receiver.lock() else { return };
                            match guard.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        job();
                    }
                })?;
        }
        Ok(HashPool {
            sender,
            queued: Arc::new(AtomicUsize::new(0)),
            capacity: queue,
        })
    }

    /// Jobs waiting or running.
    pub fn in_flight(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Runs `work` on a hashing thread and awaits its result.
    pub async fn run<T, F>(&self, work: F) -> Result<T, PasswordError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PasswordError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let queued = Arc::clone(&self.queued);
        queued.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
            queued.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = self.sender.try_send(job) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::TrySendError::Full(_) => PasswordError::Busy,
                mpsc::TrySendError::Disconnected(_) => PasswordError::WorkerGone,
            });
        }
        rx.await.map_err(|_| PasswordError::WorkerGone)?
    }
}

/// The `[password]` section of the configuration, as hashing reads it.
impl PasswordConfig {
    pub fn policy(&self) -> HashPolicy {
        HashPolicy {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    pub fn workers(&self) -> usize {
        if self.hash_workers > 0 {
            self.hash_workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: HashPolicy = HashPolicy::DANGER_TEST_MINIMUM;

    #[test]
    fn argon2id_round_trip() {
        let h = FAST.hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(verify("correct horse", &h).unwrap());
        assert!(!verify("correct horsE", &h).unwrap());
        assert!(!FAST.needs_rehash(&h));
        assert!(HashPolicy::OWASP_MINIMUM.needs_rehash(&h));
    }

    #[test]
    fn hashes_made_elsewhere_verify_and_ours_verify_elsewhere() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Made by the argon2 crate's own PHC path (as other tools make them).
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"interop pw", &salt)
            .unwrap()
            .to_string();
        assert!(verify("interop pw", &theirs).unwrap());
        assert!(!verify("interop pX", &theirs).unwrap());
        // Ours, checked by the crate's verifier.
        let ours = HashPolicy::OWASP_MINIMUM.hash("interop pw").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"interop pw", &parsed)
            .is_ok());
        // Argon2i / argon2d hashes verify too (need a rehash).
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::default())
            .hash_password(b"old", &salt)
            .unwrap()
            .to_string();
        assert!(verify("old", &argon2i).unwrap());
        assert!(HashPolicy::OWASP_MINIMUM.needs_rehash(&argon2i));
    }

    #[test]
    fn owasp_minimum_hash_has_the_expected_parameters() {
        let h = HashPolicy::OWASP_MINIMUM.hash("pw").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
    }

    #[test]
    fn passlib_bcrypt_hashes_from_the_seed_verify_and_need_rehash() {
        // From shared/fixtures/seed/users.sql: ada@example.com / AdaLovelace1815!
        let ada = "$2b$12$c2SYNWOWgPT/Z7/71rj0V.oCFrpAI9Pzk7X6bqF0qHxz0vP58cpDy";
        assert!(verify("AdaLovelace1815!", ada).unwrap());
        assert!(!verify("AdaLovelace1815", ada).unwrap());
        assert!(FAST.needs_rehash(ada));
    }

    #[test]
    fn unknown_and_malformed_hashes_are_errors_not_mismatches() {
        assert!(matches!(
            verify("x", "plaintext"),
            Err(PasswordError::UnknownScheme)
        ));
        assert!(!matches!(verify("x", "$argon2id$garbage"), Ok(true)));
        assert!(verify("x", "$argon2id$v=19$m=19456,t=2,p=1$!!!$!!!").is_err());
        assert!(verify("x", "$2b$12$short").is_err());
        assert!(FAST.needs_rehash("$argon2id$garbage"));
    }

    #[test]
    fn policy_check_rejects_impossible_parameters() {
        assert!(HashPolicy {
            memory_kib: 1,
            iterations: 1,
            parallelism: 1
        }
        .check()
        .is_err());
        assert!(!FAST.meets_owasp_minimum());
        assert!(HashPolicy::OWASP_MINIMUM.meets_owasp_minimum());
    }

    #[tokio::test]
    async fn pool_runs_jobs_and_refuses_when_full() {
        let pool = HashPool::new(1, 1).unwrap();
        assert_eq!(pool.run(|| Ok(2 + 2)).await.unwrap(), 4);
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        let pool = Arc::new(pool);
        // Occupy the worker, then fill the one queue slot.
        let p = Arc::clone(&pool);
        let first = tokio::spawn(async move {
            p.run(move || {
                let _ = block_rx.recv();
                Ok(1)
            })
            .await
        });
        while pool.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let p = Arc::clone(&pool);
        let second = tokio::spawn(async move { p.run(|| Ok(2)).await });
        while pool.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.run(|| Ok(3)).await, Err(PasswordError::Busy)));
        block_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
    }
}
