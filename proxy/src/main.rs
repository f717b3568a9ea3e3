//! meshgate edge proxy: the data plane lands with the proxy issue.

fn main() {
    eprintln!("meshgate-proxy: not built yet");
    std::process::exit(1);
}
