//! `ninjapoll-dev-db <migrations dir> <database file>`: creates the database (it must not
//! exist) and applies every migration, read at run time so that a new migration needs no
//! rebuild. scripts/sqlx-prepare points `DATABASE_URL` at the result.

use anyhow::{bail, Context, Result};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [migrations, db] = args.as_slice() else {
        bail!("usage: ninjapoll-dev-db <migrations dir> <database file>");
    };
    if db.exists() {
        bail!("{} exists; give a path for a new database", db.display());
    }
    tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let migrator = Migrator::new(migrations.as_path())
                .await
                .with_context(|| format!("reading migrations from {}", migrations.display()))?;
            let mut conn = SqliteConnectOptions::new()
                .filename(db)
                .create_if_missing(true)
                .connect()
                .await
                .with_context(|| format!("creating {}", db.display()))?;
            migrator
                .run(&mut conn)
                .await
                .context("applying migrations")?;
            conn.close().await.context("closing the database")
        })
}
