//! `kura certs`: a CA and a serving certificate for the webhook Service, the Secret that holds
//! them and the `caBundle`, for clusters without cert-manager. Renewal keeps the CA.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::{Error, Result};
use crate::tls;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The webhook Service's name.
    #[arg(long, default_value = "kura")]
    pub service: String,
    /// The webhook Service's namespace.
    #[arg(long, default_value = "kura-system")]
    pub namespace: String,
    /// Validity of the serving certificate in days (the CA gets twice as long).
    #[arg(long, default_value_t = 365)]
    pub days: i64,
    /// Directory to write ca.crt, ca.key, tls.crt, tls.key, secret.yaml and ca-bundle.txt into.
    #[arg(long, default_value = "kura-certs")]
    pub out_dir: PathBuf,
}

/// `kura certs`.
pub fn run(args: &Args) -> Result<()> {
    tls::provider();
    let names = tls::service_names(&args.service, &args.namespace);
    let (ca_crt, ca_key) = (args.out_dir.join("ca.crt"), args.out_dir.join("ca.key"));
    let b = match (
        std::fs::read_to_string(&ca_crt),
        std::fs::read_to_string(&ca_key),
    ) {
        // Renewal: keep the CA, so the webhooks' caBundle does not change.
        (Ok(cert), Ok(key)) => {
            eprintln!(
                "reusing the CA in {} (delete ca.crt and ca.key to make a new one)",
                args.out_dir.display()
            );
            tls::renew_with_ca(&tls::PemPair { cert, key }, names, args.days)
        }
        _ => tls::bundle_for(names, args.days),
    }?;
    std::fs::create_dir_all(&args.out_dir).map_err(Error::io(&args.out_dir))?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kura-tls\n  namespace: {ns}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {crt}\n  tls.key: {key}\n  ca.crt: {ca}\n",
        ns = args.namespace,
        crt = b64(&b.serving.cert),
        key = b64(&b.serving.key),
        ca = b64(&b.ca.cert),
    );
    let files: [(&str, &str, u32); 6] = [
        ("ca.crt", &b.ca.cert, 0o644),
        ("ca.key", &b.ca.key, 0o600),
        ("tls.crt", &b.serving.cert, 0o644),
        ("tls.key", &b.serving.key, 0o600),
        ("secret.yaml", &secret, 0o600),
        ("ca-bundle.txt", &b64(&b.ca.cert), 0o644),
    ];
    for (name, content, mode) in files {
        let path = args.out_dir.join(name);
        write_private(&path, content.as_bytes(), mode).map_err(Error::io(path))?;
    }
    println!(
        "wrote {dir}/{{ca.crt,ca.key,tls.crt,tls.key,secret.yaml,ca-bundle.txt}} for {svc}.{ns}.svc (valid {days} days)\n\
         apply: kubectl apply -f {dir}/secret.yaml\n\
         caBundle: the content of {dir}/ca-bundle.txt (see deploy/overlays/kura-certs)",
        dir = args.out_dir.display(),
        svc = args.service,
        ns = args.namespace,
        days = args.days
    );
    Ok(())
}

/// Writes `content` to `path` with `mode`, also when the file already exists with another.
fn write_private(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
