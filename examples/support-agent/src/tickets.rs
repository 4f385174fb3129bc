//! The keyword rules: pure functions, no HTTP.

use serde_json::{json, Value};

/// Categories in tie-break order, each with the words and phrases that suggest it.
#[rustfmt::skip]
const CATEGORIES: [(&str, &[&str]); 3] = [
    ("billing", &["invoice", "refund", "charge", "charged", "payment", "billing", "bill",
        "subscription", "price", "credit card", "receipt", "overcharged"]),
    ("technical", &["error", "bug", "crash", "crashes", "broken", "not working", "fails",
        "failed", "timeout", "slow", "api", "outage", "500"]),
    ("account", &["password", "login", "log in", "sign in", "account", "locked", "2fa",
        "username", "reset", "locked out"]),
];
#[rustfmt::skip]
const HIGH: &[&str] = &["urgent", "asap", "immediately", "outage", "down", "critical",
    "security", "breach", "charged twice", "locked out", "production"];
#[rustfmt::skip]
const LOW: &[&str] = &["question", "wondering", "feature request", "suggestion", "no rush",
    "whenever", "curious"];

/// Lower case, words separated by single spaces, padded so that `" word "` matches whole words.
fn normalize(text: &str) -> String {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    format!(" {} ", words.join(" "))
}

fn matches<'a>(text: &str, keywords: &[&'a str]) -> Vec<&'a str> {
    keywords
        .iter()
        .copied()
        .filter(|k| text.contains(&format!(" {k} ")))
        .collect()
}

/// `{ category, priority, confidence, reason }` for the ticket text.
pub fn classify(text: &str, priority_override: Option<&str>) -> Value {
    let text = normalize(text);
    let mut best: (&'static str, Vec<&str>) = ("general", Vec::new());
    for (category, keywords) in CATEGORIES {
        let found = matches(&text, keywords);
        if found.len() > best.1.len() {
            best = (category, found);
        }
    }
    let (category, found) = best;
    let (confidence, mut reason) = match found.len() {
        0 => (0.3, "no category keywords matched".to_string()),
        n => (
            [0.65, 0.8, 0.95][n.min(3) - 1],
            format!("matched keywords {}", found.join(", ")),
        ),
    };

    let overridden = ["high", "normal", "low"]
        .into_iter()
        .find(|p| priority_override.is_some_and(|o| p.eq_ignore_ascii_case(o.trim())));
    let (high, low) = (matches(&text, HIGH), matches(&text, LOW));
    let priority = match overridden {
        Some(priority) => {
            reason.push_str("; priority from priorityOverride");
            priority
        }
        None if !high.is_empty() => {
            reason.push_str(&format!("; urgent words {}", high.join(", ")));
            "high"
        }
        None if !low.is_empty() => "low",
        None => "normal",
    };
    json!({ "category": category, "priority": priority, "confidence": confidence, "reason": reason })
}

pub fn draft_reply(name: Option<&str>, id: Option<&str>, category: &str, priority: &str) -> String {
    let greeting = name.map_or("Hello,".to_string(), |n| format!("Hi {n},"));
    let about = id.map_or("your request".to_string(), |id| format!("ticket {id}"));
    let body = match category {
        "billing" => "Our billing team is reviewing the charges on your account and will correct anything that is wrong.",
        "technical" => "Our engineers are looking into the problem you reported.",
        "account" => "Our account team will help you get back into your account; please do not share your password with anyone.",
        _ => "A member of our support team will get back to you.",
    };
    let when = match priority {
        "high" => "We are treating this as urgent and will update you within the hour.",
        "low" => "We will follow up within a few business days.",
        _ => "We will follow up within one business day.",
    };
    format!("{greeting}\n\nThank you for contacting us about {about}. {body} {when}\n\nBest regards,\nThe Support Team")
}

/// The team for a category and its queue for a priority.
pub fn route(category: &str, priority: &str) -> (&'static str, String) {
    let team = match category {
        "billing" => "billing",
        "technical" => "tier2-technical",
        "account" => "accounts",
        _ => "frontline",
    };
    let lane = match priority {
        "high" => "urgent",
        "low" => "backlog",
        _ => "standard",
    };
    (team, format!("{team}-{lane}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_pick_category_and_priority() {
        let c = classify("URGENT: I was charged twice, refund please!", None);
        assert_eq!(c["category"], "billing");
        assert_eq!(c["priority"], "high");
        assert_eq!(c["confidence"], 0.8);
        assert!(c["reason"].as_str().unwrap().contains("refund"), "{c}");
        let c = classify("Just wondering about the roadmap", None);
        assert_eq!(
            (c["category"].as_str(), c["priority"].as_str()),
            (Some("general"), Some("low"))
        );
    }

    #[test]
    fn priority_override_wins_and_words_match_whole() {
        assert_eq!(
            classify("The app crashes. Urgent!", Some("LOW"))["priority"],
            "low"
        );
        assert_eq!(classify("rapid growth", None)["category"], "general"); // not "api"
    }

    #[test]
    fn routes_by_category_and_priority() {
        assert_eq!(
            route("billing", "high"),
            ("billing", "billing-urgent".to_string())
        );
        assert_eq!(route("other", "normal").1, "frontline-standard");
    }
}
