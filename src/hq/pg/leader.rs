//! Who runs the scheduled jobs (alert evaluation) when several receivers share one database:
//! the one holding the session-level advisory lock [`super::JOBS_LOCK`] on a connection of its
//! own. If that receiver dies or loses its connection, PostgreSQL releases the lock and
//! another receiver takes it within [`RETRY`].

use std::time::Duration;

use tokio::sync::watch;

/// How often a receiver without the lock tries to take it, and how often the holder checks
/// that its connection still stands.
const RETRY: Duration = Duration::from_secs(2);

/// Whether this receiver runs the jobs now. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Leadership {
    /// `true` while this receiver holds the lock.
    leading: watch::Receiver<bool>,
}

impl Leadership {
    /// Starts the task that takes and holds the lock; it ends when every clone is dropped.
    pub(crate) fn start(url: &str) -> anyhow::Result<Leadership> {
        let config: tokio_postgres::Config = url.parse()?;
        let (sender, leading) = watch::channel(false);
        tokio::spawn(hold(config, sender));
        Ok(Leadership { leading })
    }

    /// Leadership for a receiver alone with its database (sled): always leading.
    pub(crate) fn alone() -> Leadership {
        let (sender, leading) = watch::channel(true);
        // The receiver keeps the last value once the sender is gone.
        drop(sender);
        Leadership { leading }
    }

    /// Whether this receiver runs the jobs now.
    pub(crate) fn leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Follows the changes of [`Leadership::leading`].
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

/// Takes the lock and holds it while its connection stands; tries again after losing it.
async fn hold(mut config: tokio_postgres::Config, leading: watch::Sender<bool>) {
    // Keepalives both ways: a leader gone without a word loses the lock within about 15 s.
    super::harden(&mut config, "posgw-hq-jobs");
    let mut timer = tokio::time::interval(RETRY);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        if leading.is_closed() {
            return;
        }
        let tls = match super::tls() {
            Ok(tls) => tls,
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "no TLS for the jobs lock");
                continue;
            }
        };
        let Ok((client, connection)) = config.connect(tls).await else {
            continue;
        };
        let connection = tokio::spawn(connection);
        // Until the lock is taken, or the connection fails.
        let took = loop {
            let asked = tokio::time::timeout(
                RETRY,
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&super::JOBS_LOCK]),
            )
            .await;
            match asked {
                Ok(Ok(row)) if row.get::<_, bool>(0) => break true,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break false,
            }
            timer.tick().await;
            if leading.is_closed() {
                return;
            }
        };
        if !took {
            drop(client);
            connection.abort();
            let _ = connection.await;
            continue;
        }
        tracing::info!("this receiver runs the scheduled jobs (alert evaluation)");
        let _ = leading.send(true);
        // Holding: check the connection now and then; one that does not answer in time is
        // taken as lost (the server drops the session, and the lock, by its keepalives).
        loop {
            timer.tick().await;
            if leading.is_closed() {
                break;
            }
            match tokio::time::timeout(RETRY, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let _ = leading.send(false);
        tracing::warn!("this receiver no longer runs the scheduled jobs");
        drop(client);
        connection.abort();
        let _ = connection.await;
    }
}
