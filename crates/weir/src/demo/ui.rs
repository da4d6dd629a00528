//! Progress output: numbered steps, ✓/✗ lines, tables.

pub const STEPS: usize = 7;

pub fn step(n: usize, title: &str) {
    println!("\n[{n}/{STEPS}] {title}");
}

pub fn section(title: &str) {
    println!("\n{title}");
}

pub fn ok(msg: &str) {
    println!("  ✓ {msg}");
}

pub fn fail(msg: &str) {
    println!("  ✗ {msg}");
}

pub fn progress(msg: &str) {
    println!("  … {msg}");
}

pub fn note(msg: &str) {
    println!("  ! {msg}");
}

pub fn info(msg: &str) {
    println!("    {msg}");
}

/// Prints rows as aligned columns under a header, indented by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    println!("  {}", "─".repeat(total));
    for r in rows {
        line(r.clone());
    }
}
