//! keel-bootstrap: configures a Keel node at boot. See the crate docs of
//! `keel_bootstrap` and DESIGN.md for the steps.

fn main() {
    eprintln!("keel-bootstrap: not yet able to configure this node: the boot steps are not implemented in this build");
    std::process::exit(1);
}
