//! The migrations are embedded at compile time (`refinery::embed_migrations!`), which cargo
//! does not know: without this, a new or edited migration is missed until something else in
//! the crate changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
