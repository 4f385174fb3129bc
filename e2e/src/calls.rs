//! Requests through the gateway, and polling a run until it ends.

use crate::Stack;
use serde_json::Value;
use std::time::{Duration, Instant};

impl Stack {
    /// Like [`Stack::call`], but a failed request or a body that is not JSON (an outage) is
    /// an `Err`, not a panic.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .client
            .request(
                method.parse().map_err(|_| format!("bad method {method}"))?,
                format!("{}{path}", self.base_url),
            )
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let text = res.text().await.map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text)
            .map_err(|_| format!("{method} {path} answered {status} with non-JSON: {text:?}"))?;
        Ok((status, body))
    }

    /// Create workflow `wf_<name>` with `definition`; the test fails unless it is a 201.
    pub async fn create_workflow(&self, name: &str, definition: Value) {
        let body = serde_json::json!({"name": name, "definition": definition});
        let (status, answer) = self.call("POST", "/workflows", Some(body)).await;
        assert_eq!(status, 201, "create {name}: {answer}");
    }

    /// Trigger a run of `workflow` with `variables`; returns its id (the test fails unless
    /// the trigger is a 201).
    pub async fn trigger(&self, workflow: &str, variables: Value) -> String {
        let (status, body) = self
            .call(
                "POST",
                &format!("/workflows/{workflow}/trigger"),
                Some(serde_json::json!({ "variables": variables })),
            )
            .await;
        assert_eq!(status, 201, "trigger {workflow}: {body}");
        body["data"]["id"].as_str().expect("run id").to_string()
    }

    /// Send a request through the gateway with the org's key; returns (status, JSON body).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(&self.key), method, path, body).await
    }

    /// Like [`Stack::call`], with `key` as the bearer token (or no Authorization at all).
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.anon.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base_url),
        );
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.expect("request through the gateway");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| {
                panic!("{method} {path} answered {status} with non-JSON: {text:?}")
            }),
        )
    }

    /// Poll a run until `done` holds for its details (or the deadline passes: the test fails).
    pub async fn wait_until(
        &self,
        run_id: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self
                .call("GET", &format!("/workflows/runs/{run_id}"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            if done(&body["data"]) {
                return body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} not {what} after {within:?}: {}",
                body["data"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll a run until it ends (or the deadline passes, which fails the test).
    pub async fn wait_for_run(&self, run_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self
                .call("GET", &format!("/workflows/runs/{run_id}"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            let state = body["data"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if ["COMPLETED", "FAILED", "CANCELLED"].contains(&state.as_str()) {
                return body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} still {state} after {within:?}:\n{}",
                self.log_tail("executor-worker-0")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
