//! The diesel schema of the shared database (written by hand to match `migrations/`;
//! `schema_matches_the_migrations` in the tests checks them against each other).

diesel::table! {
    workflows (org_id, id) {
        org_id -> Text,
        id -> Text,
        name -> Text,
        description -> Nullable<Text>,
        is_active -> Bool,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    workflow_versions (org_id, workflow_id, version) {
        org_id -> Text,
        workflow_id -> Text,
        version -> Int4,
        definition -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    runs (id) {
        id -> Text,
        org_id -> Text,
        workflow_id -> Text,
        workflow_version -> Int4,
        status -> Text,
        variables -> Jsonb,
        output -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        completed_at -> Nullable<Timestamptz>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        idempotency_key -> Nullable<Text>,
        request_hash -> Nullable<Text>,
        request_id -> Nullable<Text>,
        parent_run_id -> Nullable<Text>,
        parent_step -> Nullable<Text>,
        wake_at -> Nullable<Timestamptz>,
        lease_takeovers -> Int4,
        root_run_id -> Nullable<Text>,
        queued_at -> Nullable<Timestamptz>,
        budget -> Nullable<Jsonb>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        run_id -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        claimed_until -> Nullable<Timestamptz>,
        attempts -> Int4,
        sent_at -> Nullable<Timestamptz>,
        dedupe_key -> Nullable<Text>,
    }
}

diesel::table! {
    step_runs (run_id, name) {
        run_id -> Text,
        name -> Text,
        position -> Int4,
        step_type -> Text,
        status -> Text,
        attempt -> Int4,
        started_at -> Nullable<Timestamptz>,
        completed_at -> Nullable<Timestamptz>,
        output -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        wake_at -> Nullable<Timestamptz>,
        child_run_id -> Nullable<Text>,
    }
}

diesel::table! {
    run_events (id) {
        id -> Int8,
        run_id -> Text,
        at -> Timestamptz,
        kind -> Text,
        step -> Nullable<Text>,
        from_status -> Nullable<Text>,
        to_status -> Nullable<Text>,
        level -> Nullable<Text>,
        message -> Nullable<Text>,
    }
}

diesel::table! {
    orgs (id) {
        id -> Text,
        name -> Text,
        created_at -> Timestamptz,
        max_queued_runs -> Nullable<Int4>,
        max_running_runs -> Nullable<Int4>,
        max_descendants_per_run -> Nullable<Int4>,
        max_workflows -> Nullable<Int4>,
        max_versions_kept -> Nullable<Int4>,
        max_event_streams -> Nullable<Int4>,
        requests_per_second -> Nullable<Int4>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        key_hash -> Text,
        key_prefix -> Text,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        hostname -> Text,
        pid -> Int4,
        started_at -> Timestamptz,
        last_heartbeat_at -> Timestamptz,
        concurrency -> Int4,
        in_flight -> Int4,
    }
}

diesel::table! {
    ops_counters (name) {
        name -> Text,
        value -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    agent_turns (run_id, step, turn) {
        run_id -> Text,
        step -> Text,
        turn -> Int4,
        attempt -> Int4,
        org_id -> Text,
        workflow_id -> Text,
        agent_id -> Text,
        model -> Text,
        messages -> Jsonb,
        reply -> Jsonb,
        tool_results -> Jsonb,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cached_tokens -> Int8,
        cost_picos -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    run_usage (run_id) {
        run_id -> Text,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cached_tokens -> Int8,
        cost_picos -> Int8,
    }
}

diesel::table! {
    agent_rate_limits (agent_id) {
        agent_id -> Text,
    }
}

diesel::table! {
    agent_calls (id) {
        id -> Int8,
        agent_id -> Text,
        at -> Timestamptz,
        tokens -> Int8,
    }
}

diesel::table! {
    agent_deltas (id) {
        id -> Int8,
        run_id -> Text,
        step -> Text,
        attempt -> Int4,
        kind -> Text,
        data -> Jsonb,
        at -> Timestamptz,
    }
}

diesel::joinable!(run_usage -> runs (run_id));

diesel::allow_tables_to_appear_in_same_query!(
    orgs,
    api_keys,
    workflows,
    workflow_versions,
    runs,
    outbox,
    step_runs,
    run_events,
    workers,
    ops_counters,
    agent_turns,
    run_usage,
    agent_rate_limits,
    agent_calls,
    agent_deltas
);
