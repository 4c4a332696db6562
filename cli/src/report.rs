//! The one line an error becomes on standard error.
//!
//! An error arrives as a chain: the command's context, then each cause. Libraries often put a
//! cause's text into their own message *and* return the cause as their source, so printing every
//! link repeats it ("Connection refused (os error 111): … Connection refused (os error 111)").
//! [`one_line`] keeps each piece of information once; [`Secrets`] then takes out any password a
//! library may have quoted.

use warren_shared::redact::Secrets;

/// Prints `error` as `error: …` on one line, without repeats or passwords.
pub(crate) fn print(error: &anyhow::Error, secrets: &Secrets) {
    let line = one_line(error.chain().map(ToString::to_string));
    eprintln!("error: {}", secrets.scrub(&line));
}

/// Joins an error chain with `: `, dropping what an earlier link already said:
///
/// * a cause whose whole text already appears in the line so far (it was embedded above);
/// * a cause's leading `label: ` when the link before it already says those words
///   (`cannot reach Postgres at …` then `cannot reach Postgres: …`; `cannot reach the broker at
///   …` then `broker: …`);
/// * a segment equal to the segment just before it (`error connecting to server: error
///   connecting to server: …`, one library wrapping its own error).
///
/// Line breaks inside a message become spaces: the answer is one line.
pub(crate) fn one_line(chain: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for message in chain {
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if message.is_empty() || line.contains(&message) {
            continue;
        }
        let message = match message.split_once(": ") {
            Some((label, rest)) if says(&previous, label) => rest.to_owned(),
            _ => message,
        };
        if line.contains(&message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&message);
        previous = message;
    }
    collapse_repeated_segments(&line)
}

/// Does `text` contain `words` as whole words?
fn says(text: &str, words: &str) -> bool {
    !words.is_empty()
        && text.match_indices(words).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + words.len()..].chars().next();
            before.is_none_or(|c| c == ' ') && after.is_none_or(|c| c == ' ' || c == ':')
        })
}

/// `a: a: b` becomes `a: b`.
fn collapse_repeated_segments(line: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in line.split(": ") {
        if segments.last() != Some(&segment) {
            segments.push(segment);
        }
    }
    segments.join(": ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    fn chain(links: &[&str]) -> String {
        one_line(links.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn a_cause_embedded_in_the_message_above_it_is_not_repeated() {
        assert_eq!(
            chain(&[
                "cannot reach the broker at amqp://guest:***@127.0.0.1:1/%2f",
                "IO error: Connection refused (os error 111)",
                "Connection refused (os error 111)",
            ]),
            "cannot reach the broker at amqp://guest:***@127.0.0.1:1/%2f: IO error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_cause_that_restates_the_label_of_the_link_above_loses_the_label() {
        assert_eq!(
            chain(&[
                "cannot reach Postgres at postgres://u@h:1/db",
                "cannot reach Postgres: error connecting to server: error connecting to server: Connection refused (os error 111)",
                "error connecting to server: Connection refused (os error 111)",
                "Connection refused (os error 111)",
            ]),
            "cannot reach Postgres at postgres://u@h:1/db: error connecting to server: Connection refused (os error 111)"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept_in_order() {
        assert_eq!(
            chain(&[
                "publishing line 3 failed",
                "broker unavailable",
                "channel closed"
            ]),
            "publishing line 3 failed: broker unavailable: channel closed"
        );
    }

    #[test]
    fn a_label_the_link_above_already_says_is_dropped() {
        assert_eq!(
            chain(&[
                "cannot reach the broker at amqp://h:1/%2f",
                "broker: IO error: Connection refused (os error 111)",
                "IO error: Connection refused (os error 111)",
                "Connection refused (os error 111)",
            ]),
            "cannot reach the broker at amqp://h:1/%2f: IO error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_label_is_dropped_only_when_the_link_above_has_it_as_whole_words() {
        assert_eq!(
            chain(&["cannot start", "can: not"]),
            "cannot start: can: not"
        );
        assert_eq!(
            chain(&["brokers down", "broker: x"]),
            "brokers down: broker: x"
        );
    }

    #[test]
    fn a_multi_line_message_becomes_one_line() {
        assert_eq!(chain(&["first\nsecond  third", ""]), "first second third");
    }
}
