//! Resource quantities as Kubernetes writes them ("100m", "1.5", "64Mi", "1G", "2e3"), read into
//! millis (cpu) or plain units (bytes, pods), and the requests a pod asks for.

use serde_json::Value;

/// The quantity in thousandths of its unit ("250m" -> 250, "2" -> 2000, "1Ki" -> 1_024_000).
pub fn parse_milli(s: &str) -> Result<i128, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a quantity");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let neg = int.starts_with('-');
    let int = int.trim_start_matches(['+', '-']);
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    // The number in millionths, to keep "0.5m" and "1.5Gi" exact enough.
    let mut micro: i128 = int.parse::<i128>().unwrap_or(0) * 1_000_000;
    let mut scale = 100_000;
    for c in frac.chars().take(6) {
        micro += i128::from(c.to_digit(10).unwrap_or(0)) * scale;
        scale /= 10;
    }
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..].parse().map_err(|_| bad())?;
            (10i128.checked_pow(exp).ok_or_else(bad)?, 1)
        }
        _ => return Err(bad()),
    };
    // micro * mul / div is millionths of the unit; thousandths are that / 1000, rounded up.
    let v = micro * mul;
    let milli = (v + div * 1000 - 1) / (div * 1000);
    Ok(if neg { -milli } else { milli })
}

/// A quantity in whole units, rounded up ("64Mi" -> 67108864, "100m" -> 1).
pub fn parse_units(s: &str) -> Result<i128, String> {
    let m = parse_milli(s)?;
    Ok((m + 999).div_euclid(1000))
}

/// What a pod asks for: cpu in millicores and memory in bytes, summed over its containers
/// (a container with only a limit requests its limit, as the API server defaults it).
pub fn pod_requests(pod: &Value) -> (i128, i128) {
    let (mut cpu, mut mem) = (0, 0);
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let get = |res: &str| {
            c.pointer(&format!("/resources/requests/{res}"))
                .or_else(|| c.pointer(&format!("/resources/limits/{res}")))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
        };
        cpu += get("cpu").and_then(|s| parse_milli(&s).ok()).unwrap_or(0);
        mem += get("memory")
            .and_then(|s| parse_units(&s).ok())
            .unwrap_or(0);
    }
    (cpu, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("250m"), Ok(250));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_units("64Mi"), Ok(64 << 20));
        assert_eq!(parse_units("1G"), Ok(1_000_000_000));
        assert_eq!(parse_units("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_units("2e3"), Ok(2000));
        assert_eq!(parse_units("100m"), Ok(1));
        assert!(parse_milli("ten").is_err());
        assert!(parse_milli("1Qi").is_err());
    }
}
