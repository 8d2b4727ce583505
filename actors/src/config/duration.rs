//! Durations as people write them, on the command line and in configuration
//! files: `500ms`, `10s`, `2m`, `1h`. A configuration key keeps its unit in
//! its name (`flush_interval_ms`); a bare number there is in that unit, and
//! a string with a unit is converted to it.

use std::{fmt, marker::PhantomData, time::Duration};

use serde::de::{self, Deserializer, Visitor};

/// A duration that could not be read; the message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parses `500ms`, `10s`, `2m`, `1h`; a bare number is seconds.
///
/// # Errors
/// [`DurationError`] naming what was not understood.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse_with_bare_unit(text, 1.0).map_err(DurationError)
}

/// Like [`parse_duration`], with a bare number counted in units of
/// `bare_secs` seconds.
fn parse_with_bare_unit(text: &str, bare_secs: f64) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional unit (ms, s, m, h)"))?;
    let seconds = match unit.trim() {
        "" => value * bare_secs,
        "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Deserializes a `*_ms` key: a number of milliseconds or a duration with a
/// unit (`"2s"`).
///
/// # Errors
/// A value that is neither, or does not fit the field.
pub fn millis<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_any(InUnit::<T> {
        unit: Duration::from_millis(1),
        name: "milliseconds",
        marker: PhantomData,
    })
}

/// Deserializes a `*_secs` key: a number of seconds or a duration with a
/// unit (`"2m"`), which must be whole seconds.
///
/// # Errors
/// A value that is neither, is not whole seconds, or does not fit the
/// field.
pub fn secs<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_any(InUnit::<T> {
        unit: Duration::from_secs(1),
        name: "seconds",
        marker: PhantomData,
    })
}

struct InUnit<T> {
    unit: Duration,
    name: &'static str,
    marker: PhantomData<T>,
}

impl<T: TryFrom<u64>> InUnit<T> {
    fn fit<E: de::Error>(&self, count: u64) -> Result<T, E> {
        T::try_from(count).map_err(|_| E::custom(format!("{count} {} is too large", self.name)))
    }
}

impl<T: TryFrom<u64>> Visitor<'_> for InUnit<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a number of {} or a duration such as \"500ms\", \"10s\", \"2m\"",
            self.name
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.fit(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        let v = u64::try_from(v)
            .map_err(|_| E::custom(format!("{v} {}: must not be negative", self.name)))?;
        self.fit(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let duration = parse_with_bare_unit(v, self.unit.as_secs_f64()).map_err(E::custom)?;
        let unit = self.unit.as_nanos();
        let nanos = duration.as_nanos();
        if nanos % unit != 0 {
            return Err(E::custom(format!(
                "{v:?}: must be a whole number of {}",
                self.name
            )));
        }
        let count =
            u64::try_from(nanos / unit).map_err(|_| E::custom(format!("{v:?} is too long")))?;
        self.fit(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Keys {
        #[serde(deserialize_with = "millis")]
        wait_ms: u64,
        #[serde(deserialize_with = "secs")]
        grace_secs: u32,
    }

    fn keys(text: &str) -> Result<Keys, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        let err = parse_duration("10 parsecs").expect_err("unknown unit");
        assert!(err.to_string().contains("parsecs"), "{err}");
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn keys_take_their_unit_or_any_unit() {
        let k = keys("wait_ms = 250\ngrace_secs = 30").expect("numbers");
        assert_eq!((k.wait_ms, k.grace_secs), (250, 30));
        let k = keys("wait_ms = \"2s\"\ngrace_secs = \"2m\"").expect("units");
        assert_eq!((k.wait_ms, k.grace_secs), (2000, 120));
        let k = keys("wait_ms = \"40\"\ngrace_secs = \"7\"").expect("bare strings");
        assert_eq!((k.wait_ms, k.grace_secs), (40, 7));
        let err = keys("wait_ms = 1\ngrace_secs = \"1500ms\"").expect_err("not whole");
        assert!(err.contains("whole number of seconds"), "{err}");
        let err = keys("wait_ms = -1\ngrace_secs = 1").expect_err("negative");
        assert!(err.contains("negative"), "{err}");
        let err = keys("wait_ms = 1\ngrace_secs = 5000000000").expect_err("too large");
        assert!(err.contains("too large"), "{err}");
    }
}
