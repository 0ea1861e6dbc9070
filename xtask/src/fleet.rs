//! `cargo xtask fleet [N]`: the fleet of compose.yaml, run here — a relay
//! daemon and N (1 to 3) traced app containers of the pyust image, each
//! with a host name of its own — and checked:
//!
//! - every app container records every scenario and then tests/fleet/app.py
//!   under `pyust record --relay relay --live`;
//! - `pyust top --once` on this machine, attached live to the apps' sessions
//!   through the relay's published live port, shows each host's process
//!   and what it runs;
//! - the relay's live port is reached on this machine's loopback only, its
//!   control and data ports not at all;
//! - the last app container is killed mid-run: its trace on the relay is
//!   still readable up to the kill, and the others finish;
//! - the relay holds every host's traces: each scenario's events (the e2e
//!   snapshots), and `pyust report` over the whole folder lists every host.
//!
//! Compose runs it: `docker compose` or docker-compose (from apt under
//! CI=true). Without either, the same containers are started with `docker
//! run`, read from compose.yaml (`compose::Services`), which stays the one
//! description.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{common, docker, e2e, normalize};

/// The hosts compose.yaml describes.
pub const MAX_APPS: usize = 3;
/// How long each app container's app.py runs: long enough for `top` and
/// the kill while it runs.
const APP_SECONDS: &str = "15";

pub struct Fleet {
    pub apps: usize,
    /// Start the containers with `docker run` even where compose is.
    pub docker_run: bool,
    /// The interpreter with pyust installed, for `top` and `report` on
    /// this machine (default: a virtualenv of python3).
    pub python: Option<PathBuf>,
}

impl Fleet {
    pub fn run(self, sh: &Shell) -> Result<()> {
        docker::ensure_daemon(sh)?;
        let runner = Runner::find(sh, self.docker_run)?;
        let python = match self.python {
            Some(p) => p,
            None => common::python_env(sh, "python3")?,
        };
        let base = docker::base_image(sh, docker::DEFAULT_SUITE, false)?;
        let image = format!(
            "pyust-e2e:{}",
            base.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "-")
        );
        docker::build(sh, &base, "runtime", &image)?;
        let traces = common::target_dir(sh).join("fleet-traces");
        clear(sh, &image, &traces)?;
        std::fs::create_dir_all(&traces)?;
        let live_port = free_port()?;
        let scenarios: Vec<String> = e2e::scenarios(sh)?
            .iter()
            .map(|p| format!("/work/{}", p.file_name().unwrap().to_string_lossy()))
            .collect();
        let run_list = format!("{} /app/app.py", scenarios.join(" "));
        let env = [
            ("PYUST_IMAGE", image.clone()),
            ("PYUST_FLEET_TRACES", traces.display().to_string()),
            ("PYUST_LIVE_PORT", live_port.to_string()),
            ("PYUST_FLEET_RUN", run_list),
            ("PYUST_APP_SECONDS", APP_SECONDS.to_owned()),
        ];
        let project = format!("pyust-fleet-{}", std::process::id());
        let hosts: Vec<String> = (1..=self.apps).map(|i| format!("app{i}")).collect();
        eprintln!(
            "fleet: a relay daemon and {} app container(s) ({}), with {}",
            self.apps,
            hosts.join(", "),
            runner.name()
        );
        let started = Instant::now();
        let fleet = runner.up(sh, &project, &env, &hosts)?;
        let result = check_running(sh, &fleet, &python, live_port, &hosts).and_then(|()| {
            // The apps that were not killed end by themselves.
            for host in &hosts[..hosts.len() - 1] {
                let status = fleet.wait(sh, host)?;
                if status != "0" {
                    bail!("fleet: {host} ended with status {status} (see its log above)");
                }
            }
            Ok(())
        });
        if result.is_err() {
            fleet.logs(sh);
        }
        fleet.down(sh);
        result?;
        eprintln!(
            "fleet: the apps ran for {:.0} s; checking the relay's copy",
            started.elapsed().as_secs_f64()
        );
        check_traces(sh, &python, &traces, &hosts, &e2e::scenarios(sh)?)?;
        clear(sh, &image, &traces)?;
        eprintln!("fleet: passed");
        Ok(())
    }
}

/// A loopback port nothing listens on.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Removes what a relay container wrote (its files are root's) with a
/// container of the image, so a user who is not root can run this too.
fn clear(sh: &Shell, image: &str, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().context("the traces folder has a parent")?;
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mount = format!("{}:/parent", parent.display());
    cmd!(
        sh,
        "docker run --rm --user root --entrypoint rm -v {mount} {image} -rf /parent/{name}"
    )
    .quiet()
    .run()?;
    Ok(())
}

/// The live sessions of app.py on the relay, as (host, session name):
/// babeltrace2's own query of the relay's live port.
fn app_sessions(sh: &Shell, live_port: u16) -> Vec<(String, String)> {
    let url = format!("url=\"net://127.0.0.1:{live_port}\"");
    let Ok(out) = cmd!(sh, "babeltrace2 query src.ctf.lttng-live sessions -p {url}")
        .quiet()
        .ignore_stderr()
        .read()
    else {
        return Vec::new();
    };
    let mut sessions = Vec::new();
    let mut host = String::new();
    for line in out.lines().map(str::trim) {
        if let Some(h) = line.strip_prefix("target-hostname: ") {
            host = h.to_owned();
        }
        if let Some(url) = line.strip_prefix("url: ") {
            let name = url.rsplit('/').next().unwrap_or_default();
            if name.ends_with("-app") {
                sessions.push((host.clone(), name.to_owned()));
            }
        }
    }
    sessions.sort();
    sessions
}

/// While the apps run: top, the exposure of the relay, and the kill.
fn check_running(
    sh: &Shell,
    fleet: &Running,
    python: &Path,
    live_port: u16,
    hosts: &[String],
) -> Result<()> {
    // Each app container records the scenarios first, then app.py.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let sessions = app_sessions(sh, live_port);
        let seen: Vec<&String> = sessions.iter().map(|(h, _)| h).collect();
        if hosts.iter().all(|h| seen.contains(&h)) {
            eprintln!("fleet: live on the relay: {sessions:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!("fleet: after 240 s the relay serves the app sessions of {seen:?} only");
        }
        for host in hosts {
            if fleet.exited(sh, host) {
                bail!("fleet: {host} ended before its app.py session was live");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // `pyust top` on this machine, through the published live port.
    let relay = format!("127.0.0.1:{}", live_port - 2);
    let out = cmd!(
        sh,
        "{python} -m pyust top --relay {relay} --once --limit 12 *-app"
    )
    .read()
    .context("pyust top --once")?;
    eprintln!("fleet: pyust top --once:\n{out}");
    check_top(&out, hosts)?;
    // Exposure: the live port on loopback only; nothing else published.
    TcpStream::connect(("127.0.0.1", live_port)).context("the live port on loopback")?;
    let published = fleet.published(sh)?;
    let want = format!("5344/tcp -> 127.0.0.1:{live_port}");
    if published.lines().map(str::trim).collect::<Vec<_>>() != [want.as_str()] {
        bail!("fleet: the relay publishes {published:?}, not only {want:?}");
    }
    for address in host_addresses(sh) {
        for port in [live_port, live_port - 2, live_port - 1] {
            if TcpStream::connect_timeout(&(address, port).into(), Duration::from_secs(2)).is_ok() {
                bail!("fleet: the relay answers on {address}:{port}, beyond loopback");
            }
        }
    }
    eprintln!(
        "fleet: the relay's live port answers on 127.0.0.1:{live_port} and on none of this \
         machine's other addresses; its control and data ports are not published"
    );
    // An app container killed while its program runs.
    let victim = hosts.last().expect("one app at least");
    fleet.kill(sh, victim)?;
    eprintln!("fleet: {victim} killed while app.py ran");
    Ok(())
}

/// `top`'s table: one process row per host, each running something, and
/// app.py's functions among the hottest.
fn check_top(out: &str, hosts: &[String]) -> Result<()> {
    let sections: Vec<&str> = out.split("\n\n").collect();
    if sections.len() < 3 {
        bail!("fleet: top printed no table");
    }
    let mut rows: Vec<Vec<&str>> = sections[1]
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    rows.sort();
    let row_hosts: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    if row_hosts != hosts.iter().map(String::as_str).collect::<Vec<_>>() {
        bail!("fleet: top shows the processes of {row_hosts:?}, not one per app host");
    }
    for r in &rows {
        // host, pid, process, events/s, then what it runs now.
        if r.len() < 5 || r[4] == "-" {
            bail!("fleet: top shows {} running nothing", r[0]);
        }
    }
    let app_funcs = sections[2]
        .lines()
        .filter(|l| l.contains("__main__.") && l.contains("(app.py:"))
        .count();
    if app_funcs == 0 {
        bail!("fleet: none of app.py's functions among top's rows");
    }
    Ok(())
}

/// This machine's IPv4 addresses other than loopback.
fn host_addresses(sh: &Shell) -> Vec<std::net::IpAddr> {
    cmd!(sh, "hostname -I")
        .quiet()
        .read()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .filter(|a| a.is_ipv4() && !a.is_loopback())
        .collect()
}

/// After the run: every host's traces on the relay.
fn check_traces(
    sh: &Shell,
    python: &Path,
    traces: &Path,
    hosts: &[String],
    scenarios: &[PathBuf],
) -> Result<()> {
    let mut found: Vec<String> = std::fs::read_dir(traces)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    if found != hosts {
        bail!("fleet: the relay holds the traces of {found:?}, not of {hosts:?}");
    }
    let mut failed = Vec::new();
    for host in hosts {
        let runs = traces.join(host).join("pyust");
        let names: Vec<String> = std::fs::read_dir(&runs)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for scenario in scenarios {
            let stem = scenario.file_stem().unwrap().to_string_lossy().into_owned();
            let mine: Vec<&String> = names
                .iter()
                .filter(|n| n.starts_with(&format!("{stem}-")))
                .collect();
            let [dir] = mine[..] else {
                bail!(
                    "fleet: {host} has {} trace(s) of {stem} on the relay",
                    mine.len()
                );
            };
            let dir = runs.join(dir);
            let text = cmd!(sh, "babeltrace2 {dir}").quiet().read()?;
            let normalized = normalize::normalize(&text, &format!("{stem}.py"));
            if e2e::check_snapshot(&stem, &normalized).is_err() {
                failed.push(format!("{host}/{stem}"));
            }
        }
        let app: Vec<&String> = names.iter().filter(|n| n.starts_with("app-")).collect();
        let [app] = app[..] else {
            bail!(
                "fleet: {host} has {} trace(s) of app.py on the relay",
                app.len()
            );
        };
        let dir = runs.join(app);
        let report = cmd!(sh, "{python} -m pyust report {dir} --limit 5")
            .quiet()
            .read()
            .with_context(|| format!("pyust report of {host}'s app.py trace"))?;
        if !report.contains("__main__.") {
            bail!("fleet: {host}'s app.py trace holds none of its functions:\n{report}");
        }
        let what = if host == hosts.last().unwrap() {
            "killed mid-run, readable up to the kill"
        } else {
            "complete"
        };
        eprintln!(
            "fleet: {host}: {} scenario trace(s) and app.py's ({what}: {})",
            scenarios.len(),
            report.lines().nth(1).unwrap_or_default()
        );
    }
    if !failed.is_empty() {
        bail!(
            "fleet: the relay's copy of {} differs from the e2e snapshots",
            failed.join(", ")
        );
    }
    let report = cmd!(sh, "{python} -m pyust report {traces} --limit 8")
        .quiet()
        .read()
        .context("pyust report over the relay's folder")?;
    eprintln!("fleet: pyust report over the relay's folder:\n{report}");
    let listed = format!("{} host(s):", hosts.len());
    let lines: Vec<&str> = report.lines().collect();
    let Some(at) = lines.iter().position(|l| *l == listed) else {
        bail!("fleet: report does not list {listed}");
    };
    for (host, line) in hosts.iter().zip(&lines[at + 1..]) {
        let want = format!("  {host}: {} process(es): ", scenarios.len() + 1);
        if !line.starts_with(&want) {
            bail!("fleet: report's line for {host} is {line:?}, not {want:?}...");
        }
    }
    Ok(())
}

/// What starts the fleet.
enum Runner {
    /// `docker compose` or `docker-compose`.
    Compose(Vec<String>),
    /// `docker run` of compose.yaml's services.
    DockerRun,
}

impl Runner {
    fn find(sh: &Shell, docker_run: bool) -> Result<Runner> {
        if docker_run {
            return Ok(Runner::DockerRun);
        }
        let works = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if works(&["docker", "compose", "version"]) {
            return Ok(Runner::Compose(vec!["docker".into(), "compose".into()]));
        }
        if !common::have("docker-compose") && common::in_ci() {
            docker::apt_install(sh, &["docker-compose"])?;
        }
        if works(&["docker-compose", "version"]) {
            return Ok(Runner::Compose(vec!["docker-compose".into()]));
        }
        eprintln!("fleet: no docker compose here: the containers of compose.yaml with docker run");
        Ok(Runner::DockerRun)
    }

    fn name(&self) -> String {
        match self {
            Runner::Compose(c) => c.join(" "),
            Runner::DockerRun => "docker run (compose.yaml's services)".into(),
        }
    }

    fn up(
        &self,
        sh: &Shell,
        project: &str,
        env: &[(&str, String)],
        hosts: &[String],
    ) -> Result<Running> {
        match self {
            Runner::Compose(command) => {
                let running = Running {
                    compose: Some((command.clone(), env_owned(env))),
                    project: project.to_owned(),
                    hosts: hosts.to_vec(),
                };
                let mut up = vec!["up", "-d", "--no-build", "relay"];
                up.extend(hosts.iter().map(String::as_str));
                if let Err(err) = running.compose(sh, &up).run() {
                    running.down(sh);
                    return Err(err.into());
                }
                Ok(running)
            }
            Runner::DockerRun => {
                let services = crate::compose::Services::read(Path::new("compose.yaml"), env)?;
                let running = Running {
                    compose: None,
                    project: project.to_owned(),
                    hosts: hosts.to_vec(),
                };
                let network = format!("{project}_default");
                cmd!(sh, "docker network create {network}")
                    .quiet()
                    .ignore_stdout()
                    .run()?;
                let mut names = vec!["relay".to_owned()];
                names.extend(hosts.iter().cloned());
                for name in &names {
                    let args = services.docker_run_args(name, project, &network)?;
                    if let Err(err) = cmd!(sh, "docker run -d {args...}")
                        .quiet()
                        .ignore_stdout()
                        .run()
                    {
                        running.down(sh);
                        return Err(err.into());
                    }
                }
                Ok(running)
            }
        }
    }
}

fn env_owned(env: &[(&str, String)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// A compose command and the environment it reads compose.yaml with.
type Compose = (Vec<String>, Vec<(String, String)>);

/// A started fleet.
struct Running {
    /// The compose command, or None (docker run).
    compose: Option<Compose>,
    project: String,
    hosts: Vec<String>,
}

impl Running {
    /// `COMPOSE -p PROJECT -f compose.yaml ARGS...` with compose.yaml's
    /// variables in its environment.
    fn compose<'a>(&self, sh: &'a Shell, args: &[&str]) -> xshell::Cmd<'a> {
        let (command, env) = self.compose.as_ref().expect("a fleet compose started");
        let (program, options) = command.split_first().expect("a compose command");
        let project = &self.project;
        let mut cmd = cmd!(
            sh,
            "{program} {options...} -p {project} -f compose.yaml {args...}"
        );
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    /// The container of `service`.
    fn container(&self, sh: &Shell, service: &str) -> Result<String> {
        match &self.compose {
            Some(_) => {
                let id = self.compose(sh, &["ps", "-q", service]).quiet().read()?;
                if id.is_empty() {
                    bail!("fleet: no container of {service}");
                }
                Ok(id)
            }
            None => Ok(format!("{}_{service}", self.project)),
        }
    }

    fn exited(&self, sh: &Shell, service: &str) -> bool {
        let Ok(id) = self.container(sh, service) else {
            return true;
        };
        let format = "{{.State.Running}}";
        cmd!(sh, "docker inspect -f {format} {id}")
            .quiet()
            .read()
            .is_ok_and(|s| s == "false")
    }

    fn wait(&self, sh: &Shell, service: &str) -> Result<String> {
        let id = self.container(sh, service)?;
        Ok(cmd!(sh, "docker wait {id}").quiet().read()?)
    }

    fn kill(&self, sh: &Shell, service: &str) -> Result<()> {
        let id = self.container(sh, service)?;
        cmd!(sh, "docker kill {id}").quiet().ignore_stdout().run()?;
        Ok(())
    }

    fn published(&self, sh: &Shell) -> Result<String> {
        let id = self.container(sh, "relay")?;
        Ok(cmd!(sh, "docker port {id}").quiet().read()?)
    }

    fn logs(&self, sh: &Shell) {
        let mut services = vec!["relay".to_owned()];
        services.extend(self.hosts.iter().cloned());
        for service in services {
            if let Ok(id) = self.container(sh, &service) {
                eprintln!("==> {service}'s log:");
                let _ = cmd!(sh, "docker logs --tail 30 {id}").quiet().run();
            }
        }
    }

    /// Stops and removes the containers and their network (the relay
    /// daemon is stopped last: what the apps sent is on disk).
    fn down(&self, sh: &Shell) {
        let project = &self.project;
        match &self.compose {
            Some(_) => {
                let _ = self
                    .compose(sh, &["down", "-t", "10"])
                    .quiet()
                    .ignore_stdout()
                    .ignore_stderr()
                    .run();
            }
            None => {
                let mut names: Vec<String> = self
                    .hosts
                    .iter()
                    .map(|h| format!("{project}_{h}"))
                    .collect();
                names.push(format!("{project}_relay"));
                let all = names.clone();
                let _ = cmd!(sh, "docker stop -t 10 {names...}")
                    .quiet()
                    .ignore_stdout()
                    .ignore_stderr()
                    .run();
                let _ = cmd!(sh, "docker rm -f {all...}")
                    .quiet()
                    .ignore_stdout()
                    .ignore_stderr()
                    .run();
                let network = format!("{project}_default");
                let _ = cmd!(sh, "docker network rm {network}")
                    .quiet()
                    .ignore_stdout()
                    .ignore_stderr()
                    .run();
            }
        }
    }
}
