//! The schema: migrations are safe when replicas start together.

use warren_tests::pg_server_url;

/// Three replicas preparing one brand-new database at once: it is created once, each migration
/// applied once, and every replica ends up with a usable schema.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_create_and_migrate_the_database_once() {
    let name = format!(
        "warren_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = format!("{}/{name}", pg_server_url());
    let (a, b, c) = tokio::join!(
        warren_shared::db::prepare(&url, 1),
        warren_shared::db::prepare(&url, 1),
        warren_shared::db::prepare(&url, 1),
    );
    let pool = a.unwrap();
    b.unwrap();
    c.unwrap();
    let client = pool.get().await.unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    let embedded = warren_shared::db::embedded_migrations().len();
    assert_eq!(
        applied,
        i64::try_from(embedded).unwrap(),
        "each migration once"
    );
    for table in ["runs", "run_steps", "run_transitions", "workers"] {
        client
            .execute(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    drop(client);
    pool.close();
    warren_tests::drop_database(&name).await;
}
