//! Progress output: numbered steps, ✓/✗ lines, tables.
//!
//! Everything goes through [`line`] and [`eline`], which ignore write errors:
//! a reader that went away (`weir demo | head`, a closed terminal, a `tee`
//! killed by the same Ctrl-C) must never stop the demo from removing what it
//! created. `println!` would panic there, and a second panic during cleanup
//! aborts the process.

use std::io::Write;

pub const STEPS: usize = 7;

/// Writes one line to stdout, ignoring errors (see the module docs).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Writes one line to stderr, ignoring errors.
pub fn eline(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

pub fn step(n: usize, title: &str) {
    say!("\n[{n}/{STEPS}] {title}");
}

pub fn section(title: &str) {
    say!("\n{title}");
}

pub fn ok(msg: &str) {
    say!("  ✓ {msg}");
}

pub fn fail(msg: &str) {
    say!("  ✗ {msg}");
}

pub fn progress(msg: &str) {
    say!("  … {msg}");
}

pub fn note(msg: &str) {
    say!("  ! {msg}");
}

pub fn info(msg: &str) {
    say!("    {msg}");
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
        say!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    say!("  {}", "─".repeat(total));
    for r in rows {
        line(r.clone());
    }
}
