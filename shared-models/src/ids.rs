//! Parsed identifiers (docs/API.md "Identifiers and times"). Once built, they are known good.

use std::fmt;

const MAX_NAME_LEN: usize = 64;

/// Why a name was refused, as a sentence fit for a `details[].message`.
pub(crate) fn name_problem(s: &str) -> Option<String> {
    if s.is_empty() || s.chars().count() > MAX_NAME_LEN {
        return Some(format!("must be 1 to {MAX_NAME_LEN} characters long"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some("must start with a letter".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Some("may contain only letters, digits, '_' and '-'".into());
    }
    None
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(s: &str) -> Result<Self, String> {
                match name_problem(s) {
                    None => Ok(Self(s.to_string())),
                    Some(problem) => Err(problem),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A workflow's name: 1-64 letters, digits, `_` and `-`, starting with a letter.
    WorkflowName
);
name_type!(
    /// A step's name, under the same rule as a workflow name.
    StepName
);
name_type!(
    /// An organisation id (`org_acme_123`), under the same rule.
    OrgId
);

/// `wf_` + the workflow's name. Stable: a deleted and re-created workflow gets it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkflowId(String);

impl WorkflowId {
    pub const PREFIX: &'static str = "wf_";

    pub fn for_name(name: &WorkflowName) -> Self {
        Self(format!("{}{}", Self::PREFIX, name.as_str()))
    }

    /// Parse an id from a path or body; `None` when it cannot name any workflow.
    pub fn parse(s: &str) -> Option<Self> {
        let name = s.strip_prefix(Self::PREFIX)?;
        WorkflowName::parse(name).ok().map(|n| Self::for_name(&n))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `run_` + a lowercase ULID: unique and time-sortable, so "newest first" is "largest id first".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

impl RunId {
    pub(crate) const PREFIX: &'static str = "run_";

    #[cfg(feature = "queue")] // new runs are the run lifecycle's (`runs`)
    pub(crate) fn generate() -> Self {
        Self(format!(
            "{}{}",
            Self::PREFIX,
            ulid::Ulid::new().to_string().to_lowercase()
        ))
    }

    /// Parse an id from a path or body; `None` when it cannot name any run.
    pub fn parse(s: &str) -> Option<Self> {
        let token = s.strip_prefix(Self::PREFIX)?;
        (token.len() == 26
            && token
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()))
        .then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_names_follow_the_rule() {
        assert!(WorkflowName::parse("support_triage").is_ok());
        assert!(WorkflowName::parse("a-1").is_ok());
        assert!(WorkflowName::parse("").is_err());
        assert!(WorkflowName::parse("1abc").is_err());
        assert!(WorkflowName::parse("has space").is_err());
        assert!(WorkflowName::parse(&"a".repeat(65)).is_err());
        assert!(WorkflowName::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn workflow_id_is_wf_plus_name() {
        let name = WorkflowName::parse("support_triage").unwrap();
        assert_eq!(WorkflowId::for_name(&name).as_str(), "wf_support_triage");
        assert!(WorkflowId::parse("wf_support_triage").is_some());
        assert!(WorkflowId::parse("runs").is_none());
        assert!(WorkflowId::parse("wf_").is_none());
    }

    #[test]
    fn run_ids_are_lowercase_and_sort_by_time() {
        let a = RunId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RunId::generate();
        assert!(a.as_str() < b.as_str());
        assert_eq!(a.as_str(), a.as_str().to_lowercase());
        assert!(RunId::parse(a.as_str()).is_some());
        assert!(RunId::parse("run_01h3j4k5m6").is_none());
    }
}
