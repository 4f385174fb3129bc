use crate::helpers::{nowhere, spawn_app_with_broker, TestApp};
use runtime_service::publisher::AmqpPublisher;
use runtime_service::relay::relay_once;
use serde_json::json;
use shared_models::queue::QueueNames;
use std::time::Duration;

async fn unsent(app: &TestApp) -> i64 {
    use diesel::prelude::*;
    use shared_models::schema::outbox;
    let mut conn = app.db.pool.get().expect("conn");
    outbox::table
        .filter(outbox::sent_at.is_null())
        .count()
        .get_result(&mut conn)
        .expect("count")
}

#[tokio::test]
async fn runs_accepted_while_the_broker_is_unreachable_are_published_by_the_relay() {
    // A real broker connection that fails: nothing listens on this port.
    let app = spawn_app_with_broker(&nowhere()).await;
    app.workflow("w", true);
    for _ in 0..3 {
        let r = app.post("/workflows/wf_w/trigger", json!({})).await;
        assert_eq!(
            r.status, 201,
            "a trigger never fails because the broker is down: {}",
            r.body
        );
    }
    assert_eq!(unsent(&app).await, 3);
    let r = app.get("/readyz").await;
    assert_eq!(
        (r.status, r.body["error"]["details"][0]["field"].as_str()),
        (503, Some("broker"))
    );

    // The broker is back: the relay publishes everything once, and marks it sent.
    let healthy = AmqpPublisher::new(&crate::helpers::broker(), QueueNames::new(&app.prefix));
    assert_eq!(
        relay_once(&app.db.pool, &healthy, Duration::ZERO)
            .await
            .expect("relay"),
        3
    );
    assert_eq!(unsent(&app).await, 0);
    assert_eq!(app.queued().await, 3);
    assert_eq!(
        relay_once(&app.db.pool, &healthy, Duration::ZERO)
            .await
            .expect("relay"),
        0
    );
}

#[tokio::test]
async fn the_relay_leaves_fresh_rows_to_the_request_path() {
    let app = spawn_app_with_broker(&nowhere()).await;
    app.workflow("w", true);
    let r = app.post("/workflows/wf_w/trigger", json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let healthy = AmqpPublisher::new(&crate::helpers::broker(), QueueNames::new(&app.prefix));
    assert_eq!(
        relay_once(&app.db.pool, &healthy, Duration::from_secs(60))
            .await
            .expect("relay"),
        0
    );
    assert_eq!(unsent(&app).await, 1);
}
