//! The harness itself: both throwaway servers answer.

use crate::support::servers;

#[test]
fn postgres_answers_on_a_database_of_its_own() {
    let url = servers::new_database();
    let mut client = match postgres::Client::connect(&url, postgres::NoTls) {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to {url}: {e}"),
    };
    let row = client.query_one("SELECT current_database(), 1 + 1", &[]);
    let (db, two): (String, i32) = match row {
        Ok(r) => (r.get(0), r.get(1)),
        Err(e) => panic!("query failed: {e}"),
    };
    assert!(db.starts_with("ragspool_test_"), "{db}");
    assert_eq!(two, 2);
}

#[test]
fn redis_answers_ping() {
    let s = servers::servers();
    assert_eq!(servers::redis_ping((s.redis.0.as_str(), s.redis.1)), Ok(()));
    assert!(servers::new_redis_db() < s.redis_databases);
}
