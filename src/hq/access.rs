//! Who may see what: tokens, users and their scope, password hashes, login sessions and the
//! limit on failed logins (see the module doc, "Access").

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore as _;

use super::config::{HqSettings, RegionSettings, Role};

/// How long a login session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most; the oldest goes when one more signs in.
pub const MAX_SESSIONS: usize = 10_000;
/// Failed logins allowed per name and per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The window of [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Keys (names and addresses) the failure limiter tracks at most.
const MAX_FAILURE_KEYS: usize = 100_000;
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "posgw_hq_session";

/// Hashes `password` as an argon2id PHC string with a random 128-bit salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|error| anyhow::anyhow!("salt: {error}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| anyhow::anyhow!("hashing failed: {error}"))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `hash` (the crate compares in constant time).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// `Ok` if `hash` is an argon2id PHC string; else why not.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash.trim()).map_err(|error| error.to_string())?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("algorithm '{}'", parsed.algorithm));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("no salt or hash".to_string());
    }
    // Parameters the crate cannot use would fail every login; better at load time.
    argon2::Params::try_from(&parsed).map_err(|error| error.to_string())?;
    Ok(())
}

/// A hash to verify against when the name is unknown, so that answering takes as long.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("posgw-no-such-user").unwrap_or_default())
}

/// What a reader may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the admin token, `admin` users).
    All,
    /// The stores of one region in full; every other region only as aggregates.
    Region {
        /// The region id.
        id: String,
        /// Its stores.
        stores: HashSet<String>,
    },
    /// One store.
    Store(String),
}

impl Scope {
    /// Whether this scope sees `store`'s records in full.
    pub fn sees_store(&self, store: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Region { stores, .. } => stores.contains(store),
            Scope::Store(code) => code == store,
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A store's gateway (its code).
    Store(String),
    /// A reader: the admin token (named `admin`) or a user, with what it may see.
    Reader {
        /// The user's name.
        name: String,
        /// What it may see.
        scope: Scope,
    },
    /// No token, or an unknown one.
    Unknown,
}

/// The tokens, users and regions of one configuration; replaced whole on reload.
#[derive(Debug, Default)]
pub struct Directory {
    /// (token, store code) pairs.
    stores: Vec<(String, String)>,
    /// The admin token, if configured.
    admin: Option<String>,
    /// (token, user name) pairs of users with a `token_file`.
    user_tokens: Vec<(String, String)>,
    /// Users by name: (role, password hash).
    users: HashMap<String, (Role, Option<String>)>,
    /// The regions, in file order.
    regions: Vec<RegionSettings>,
    /// Store code -> region id.
    store_region: HashMap<String, String>,
}

impl Directory {
    /// The directory of `settings`.
    pub fn new(settings: &HqSettings) -> Self {
        Directory {
            stores: settings
                .stores
                .iter()
                .map(|store| (store.token.clone(), store.code.clone()))
                .collect(),
            admin: settings.admin_token.clone(),
            user_tokens: settings
                .users
                .iter()
                .filter_map(|user| Some((user.token.clone()?, user.name.clone())))
                .collect(),
            users: settings
                .users
                .iter()
                .map(|user| {
                    (
                        user.name.clone(),
                        (user.role.clone(), user.password_hash.clone()),
                    )
                })
                .collect(),
            regions: settings.regions.clone(),
            store_region: settings
                .regions
                .iter()
                .flat_map(|region| {
                    region
                        .stores
                        .iter()
                        .map(|store| (store.clone(), region.id.clone()))
                })
                .collect(),
        }
    }

    /// Whether a region with this id is configured.
    pub fn has_region(&self, id: &str) -> bool {
        self.regions.iter().any(|region| region.id == id)
    }

    /// The region of `store`, if it is in one.
    pub fn region_of(&self, store: &str) -> Option<&str> {
        self.store_region.get(store).map(String::as_str)
    }

    /// The configured regions, in file order.
    pub fn regions(&self) -> &[RegionSettings] {
        &self.regions
    }

    /// The configured store codes, in file order.
    pub fn store_codes(&self) -> impl Iterator<Item = &str> {
        self.stores.iter().map(|(_, code)| code.as_str())
    }

    /// The scope of user `name`, if there is such a user.
    pub fn user_scope(&self, name: &str) -> Option<Scope> {
        let (role, _) = self.users.get(name)?;
        Some(match role {
            Role::Admin => Scope::All,
            Role::Store(code) => Scope::Store(code.clone()),
            Role::Region(id) => Scope::Region {
                id: id.clone(),
                stores: self
                    .regions
                    .iter()
                    .find(|region| &region.id == id)
                    .map(|region| region.stores.iter().cloned().collect())
                    .unwrap_or_default(),
            },
        })
    }

    /// A reader caller for user `name`, if there is such a user.
    pub fn reader(&self, name: &str) -> Option<Caller> {
        Some(Caller::Reader {
            name: name.to_string(),
            scope: self.user_scope(name)?,
        })
    }

    /// Who a bearer token belongs to. Every token is compared, in constant time per token,
    /// so timing tells nothing about which token (or which prefix) came close.
    pub fn identify_token(&self, token: &str) -> Caller {
        let mut caller = Caller::Unknown;
        for (store_token, code) in &self.stores {
            if constant_time_eq(store_token.as_bytes(), token.as_bytes()) {
                caller = Caller::Store(code.clone());
            }
        }
        for (user_token, name) in &self.user_tokens {
            if constant_time_eq(user_token.as_bytes(), token.as_bytes()) {
                caller = self.reader(name).unwrap_or(Caller::Unknown);
            }
        }
        if let Some(admin) = &self.admin {
            if constant_time_eq(admin.as_bytes(), token.as_bytes()) {
                caller = Caller::Reader {
                    name: "admin".to_string(),
                    scope: Scope::All,
                };
            }
        }
        caller
    }

    /// Checks a login (slow: argon2; run it on a blocking thread). An unknown name or a user
    /// without a password costs a verification too.
    pub fn check_login(&self, name: &str, password: &str) -> bool {
        match self.users.get(name) {
            Some((_, Some(hash))) => verify_password(password, hash),
            _ => {
                let _ = verify_password(password, dummy_hash());
                false
            }
        }
    }
}

/// Byte equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The key a session is kept under: the SHA-256 of its id, hex. Only the browser holds the
/// id itself; what is stored (in memory, in PostgreSQL) cannot be replayed as a cookie.
pub fn session_hash(id: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Login sessions in memory: random 256-bit ids, each with its user and expiry, kept by
/// [`session_hash`]. With PostgreSQL the receivers share them (`server`: each learns the
/// others' sessions from the `sessions` table).
#[derive(Debug, Default)]
pub struct Sessions {
    /// The sessions and their order of creation.
    inner: Mutex<SessionTable>,
}

/// The inside of [`Sessions`].
#[derive(Debug, Default)]
struct SessionTable {
    /// hash of the id -> (user name, expiry).
    by_id: HashMap<String, (String, Instant)>,
    /// Hashes, oldest first (ones already gone are skipped when evicting).
    order: VecDeque<String>,
}

impl Sessions {
    /// Starts a session for `name`; returns its id. Evicts the oldest past [`MAX_SESSIONS`].
    pub fn create(&self, name: &str) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        self.learn(&session_hash(&id), name, SESSION_LIFETIME);
        id
    }

    /// Holds session `hash` of `name` for `lasting` more (one made here, or by another
    /// receiver). Evicts the oldest past [`MAX_SESSIONS`].
    pub fn learn(&self, hash: &str, name: &str, lasting: Duration) {
        let id = hash.to_string();
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(held) = table.by_id.get_mut(&id) {
            *held = (name.to_string(), now + lasting);
            return;
        }
        let SessionTable { by_id, order } = &mut *table;
        if by_id.len() >= MAX_SESSIONS {
            by_id.retain(|_, (_, expiry)| *expiry > now);
        }
        while by_id.len() >= MAX_SESSIONS {
            match order.pop_front() {
                Some(old) => {
                    by_id.remove(&old);
                }
                None => break,
            }
        }
        if order.len() > 2 * MAX_SESSIONS {
            order.retain(|old| by_id.contains_key(old));
        }
        by_id.insert(id.clone(), (name.to_string(), now + lasting));
        order.push_back(id);
    }

    /// The user of session `id`, if it exists and has not expired.
    pub fn user(&self, id: &str) -> Option<String> {
        let hash = session_hash(id);
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (name, expiry) = table.by_id.get(&hash)?;
        if *expiry <= Instant::now() {
            table.by_id.remove(&hash);
            return None;
        }
        Some(name.clone())
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) {
        self.forget(&session_hash(id));
    }

    /// Ends the session kept under `hash`.
    pub fn forget(&self, hash: &str) {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        table.by_id.remove(hash);
    }

    /// Sessions held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }
}

/// Failed logins per name and per client address, within [`FAILURE_WINDOW`].
#[derive(Debug, Default)]
pub struct FailureLimiter {
    /// key -> times of failures within the window.
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl FailureLimiter {
    /// `Some(seconds to wait)` if `name` or `address` already has [`MAX_FAILURES`] failures in
    /// the window.
    pub fn blocked(&self, name: &str, address: IpAddr) -> Option<u64> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut wait = None;
        for key in keys(name, address) {
            if let Some(times) = failures.get_mut(&key) {
                while times.front().is_some_and(|at| now - *at >= FAILURE_WINDOW) {
                    times.pop_front();
                }
                if times.len() >= MAX_FAILURES {
                    let oldest = times.front().copied().unwrap_or(now);
                    let left = FAILURE_WINDOW.saturating_sub(now - oldest);
                    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                    wait = Some(wait.unwrap_or(0).max(seconds.max(1)));
                }
            }
        }
        wait
    }

    /// Counts a failed login of `name` from `address`; true when this failure is the one that
    /// blocks the name or the address (so the block is logged once, not at every refusal).
    pub fn failed(&self, name: &str, address: IpAddr) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failures.len() >= MAX_FAILURE_KEYS {
            failures.retain(|_, times| times.back().is_some_and(|at| now - *at < FAILURE_WINDOW));
            if failures.len() >= MAX_FAILURE_KEYS {
                // Under a flood of distinct names, forget rather than grow without bound.
                failures.clear();
            }
        }
        let mut now_blocked = false;
        for key in keys(name, address) {
            let times = failures.entry(key).or_default();
            times.retain(|at| now - *at < FAILURE_WINDOW);
            times.push_back(now);
            now_blocked |= times.len() == MAX_FAILURES;
            while times.len() > MAX_FAILURES {
                times.pop_front();
            }
        }
        now_blocked
    }
}

/// The limiter's keys of a login attempt.
fn keys(name: &str, address: IpAddr) -> [String; 2] {
    [format!("name:{name}"), format!("addr:{address}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_check() {
        let hash = hash_password("s3cret").expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert!(verify_password("s3cret", &hash));
        assert!(!verify_password("s3creT", &hash));
        assert!(check_hash(&hash).is_ok());
        assert!(check_hash("$argon2id$v=19$...").is_err());
        assert!(check_hash("plain").is_err());
        let argon2i = hash.replacen("argon2id", "argon2i", 1);
        assert!(check_hash(&argon2i).is_err());
    }

    #[test]
    fn sessions_expire_evict_and_end() {
        let sessions = Sessions::default();
        let first = sessions.create("a");
        assert_eq!(first.len(), 64);
        assert_eq!(sessions.user(&first).as_deref(), Some("a"));
        for _ in 0..MAX_SESSIONS {
            sessions.create("b");
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert_eq!(sessions.user(&first), None, "the oldest was evicted");
        let last = sessions.create("c");
        sessions.remove(&last);
        assert_eq!(sessions.user(&last), None);
    }

    #[test]
    fn failures_block_per_name_and_per_address() {
        let limiter = FailureLimiter::default();
        let here: IpAddr = "127.0.0.1".parse().expect("ip");
        let there: IpAddr = "10.0.0.1".parse().expect("ip");
        for attempt in 1..=MAX_FAILURES {
            assert_eq!(limiter.blocked("a", here), None);
            // Only the failure that starts the block says so: it is logged once.
            assert_eq!(limiter.failed("a", here), attempt == MAX_FAILURES);
        }
        let wait = limiter.blocked("a", there).expect("name blocked");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(limiter.blocked("b", here).is_some(), "address blocked");
        assert_eq!(limiter.blocked("b", there), None);
    }
}
