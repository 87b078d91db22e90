//! Firecracker's API paths and methods (`src/firecracker/swagger/firecracker.yaml`, and its
//! `api_server/parsed_request.rs` for the error messages): a request becomes an [`Action`]
//! for the controller, or a 400 with Firecracker's message. Paths Ember does not serve
//! (balloon, mmds, cpu-config, entropy, pmem, serial, hotplug) get a 400 that names them.

use crate::http::Request;
use crate::models::{self, parse_body, Supported};

/// What a request asks of the VMM.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Action {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    GetFullConfig,
    PutBootSource(models::BootSource),
    PutDrive(models::Drive),
    PatchDrive(models::PartialDrive),
    PutMachineConfig(models::MachineConfig),
    PatchMachineConfig(models::MachineConfigUpdate),
    PutNetworkInterface(models::NetworkInterface),
    PatchNetworkInterface(models::PartialNetworkInterface),
    PutVsock(models::Vsock),
    PutLogger(models::Logger),
    PutMetrics(models::Metrics),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
    CreateSnapshot(models::SnapshotCreate),
    LoadSnapshot(models::SnapshotLoad),
}

/// Paths of Firecracker's API that Ember does not serve.
const NOT_SERVED: &[&str] = &[
    "balloon",
    "mmds",
    "cpu-config",
    "entropy",
    "pmem",
    "serial",
    "hotplug",
];

/// Firecracker's resource id rule: not empty, alphanumeric or `_`.
fn checked_id(id: Option<&str>) -> Result<&str, String> {
    let id = id
        .filter(|i| !i.is_empty())
        .ok_or("The ID cannot be empty.")?;
    if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return Err(
            "API Resource IDs can only contain alphanumeric characters and underscores.".into(),
        );
    }
    Ok(id)
}

fn supported<T: Supported>(t: T) -> Result<T, String> {
    t.check().map_err(|e| e.0)?;
    Ok(t)
}

/// The action a request asks for, or the fault message of a 400.
pub fn route(req: &Request) -> Result<Action, String> {
    let invalid = || {
        format!(
            "Invalid request method and/or path: {} {}.",
            req.method, req.path
        )
    };
    let mut tokens = req.path.trim_start_matches('/').split_terminator('/');
    let first = tokens.next().unwrap_or("");
    let second = tokens.next();
    if tokens.next().is_some() {
        return Err(invalid());
    }
    let body = req.body.as_deref();
    match (req.method.as_str(), body) {
        ("GET", Some(_)) => return Err("GET request cannot have a body.".into()),
        ("PUT", None) => return Err("Empty PUT request.".into()),
        ("PATCH", None) => return Err("Empty PATCH request.".into()),
        _ => {}
    }
    if NOT_SERVED.contains(&first) {
        return Err(format!(
            "The /{first} endpoint is not supported by Ember (no such device or service)."
        ));
    }
    let body = body.unwrap_or_default();
    match (req.method.as_str(), first, second) {
        ("GET", "", None) => Ok(Action::GetInstanceInfo),
        ("GET", "version", None) => Ok(Action::GetVersion),
        ("GET", "machine-config", None) => Ok(Action::GetMachineConfig),
        ("GET", "vm", Some("config")) => Ok(Action::GetFullConfig),
        ("PUT", "actions", None) => {
            let a: models::InstanceAction = parse_body(body)?;
            Ok(match a.action_type {
                models::ActionType::InstanceStart => Action::InstanceStart,
                models::ActionType::SendCtrlAltDel => Action::SendCtrlAltDel,
                models::ActionType::FlushMetrics => Action::FlushMetrics,
            })
        }
        ("PUT", "boot-source", None) => Ok(Action::PutBootSource(parse_body(body)?)),
        ("PUT", "drives", id) => {
            let id = checked_id(id)?;
            let d: models::Drive = parse_body(body)?;
            if d.drive_id != id {
                return Err("The id from the path does not match the id from the body!".into());
            }
            Ok(Action::PutDrive(supported(d)?))
        }
        ("PATCH", "drives", id) => {
            let id = checked_id(id)?;
            let d: models::PartialDrive = parse_body(body)?;
            if d.drive_id != id {
                return Err("The id from the path does not match the id from the body!".into());
            }
            Ok(Action::PatchDrive(supported(d)?))
        }
        ("PUT", "machine-config", None) => {
            Ok(Action::PutMachineConfig(supported(parse_body(body)?)?))
        }
        ("PATCH", "machine-config", None) => {
            let u: models::MachineConfigUpdate = parse_body(body)?;
            if u.is_empty() {
                return Err("Empty PATCH request.".into());
            }
            Ok(Action::PatchMachineConfig(u))
        }
        ("PUT", "network-interfaces", id) => {
            let id = checked_id(id)?;
            let n: models::NetworkInterface = parse_body(body)?;
            if n.iface_id != id {
                return Err(format!(
                    "The id from the path [{id}] does not match the id from the body [{}]!",
                    n.iface_id
                ));
            }
            Ok(Action::PutNetworkInterface(supported(n)?))
        }
        ("PATCH", "network-interfaces", id) => {
            let id = checked_id(id)?;
            let n: models::PartialNetworkInterface = parse_body(body)?;
            if n.iface_id != id {
                return Err(format!(
                    "The id from the path [{id}] does not match the id from the body [{}]!",
                    n.iface_id
                ));
            }
            Ok(Action::PatchNetworkInterface(supported(n)?))
        }
        ("PUT", "vsock", None) => Ok(Action::PutVsock(parse_body(body)?)),
        ("PUT", "logger", None) => Ok(Action::PutLogger(parse_body(body)?)),
        ("PUT", "metrics", None) => Ok(Action::PutMetrics(parse_body(body)?)),
        ("PATCH", "vm", None) => {
            let v: models::VmStateBody = parse_body(body)?;
            Ok(match v.state {
                models::VmState::Paused => Action::Pause,
                models::VmState::Resumed => Action::Resume,
            })
        }
        ("PUT", "snapshot", Some("create")) => {
            Ok(Action::CreateSnapshot(supported(parse_body(body)?)?))
        }
        ("PUT", "snapshot", Some("load")) => {
            Ok(Action::LoadSnapshot(supported(parse_body(body)?)?))
        }
        ("PUT", "snapshot", None) => Err("Missing snapshot operation type.".into()),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: Option<&str>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.map(|b| b.as_bytes().to_vec()),
            keep_alive: true,
        }
    }

    fn ok(method: &str, path: &str, body: Option<&str>) -> Action {
        route(&req(method, path, body)).expect("routes")
    }

    fn fault(method: &str, path: &str, body: Option<&str>) -> String {
        route(&req(method, path, body)).expect_err("refused")
    }

    #[test]
    fn the_documented_requests_route() {
        assert_eq!(ok("GET", "/", None), Action::GetInstanceInfo);
        assert_eq!(ok("GET", "/version", None), Action::GetVersion);
        assert_eq!(ok("GET", "/vm/config", None), Action::GetFullConfig);
        assert_eq!(
            ok(
                "PUT",
                "/actions",
                Some(r#"{"action_type": "InstanceStart"}"#)
            ),
            Action::InstanceStart
        );
        assert!(matches!(
            ok("PUT", "/drives/rootfs", Some(r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}"#)),
            Action::PutDrive(d) if d.is_root_device
        ));
        assert_eq!(
            ok("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
            Action::Pause
        );
        assert_eq!(
            ok("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)),
            Action::Resume
        );
        assert!(matches!(
            ok(
                "PUT",
                "/snapshot/create",
                Some(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
            ),
            Action::CreateSnapshot(_)
        ));
        assert!(matches!(
            ok("PATCH", "/machine-config", Some(r#"{"vcpu_count": 2}"#)),
            Action::PatchMachineConfig(u) if u.vcpu_count == Some(2)
        ));
    }

    #[test]
    fn firecrackers_messages_for_bad_requests() {
        assert_eq!(fault("PUT", "/actions", None), "Empty PUT request.");
        assert_eq!(fault("PATCH", "/vm", None), "Empty PATCH request.");
        assert_eq!(
            fault("GET", "/", Some("{}")),
            "GET request cannot have a body."
        );
        assert_eq!(
            fault("GET", "/nope", None),
            "Invalid request method and/or path: GET /nope."
        );
        assert_eq!(
            fault("DELETE", "/drives/a", None),
            "Invalid request method and/or path: DELETE /drives/a."
        );
        assert_eq!(
            fault("PUT", "/drives/a/b", Some("{}")),
            "Invalid request method and/or path: PUT /drives/a/b."
        );
        assert_eq!(
            fault(
                "PUT",
                "/drives/a",
                Some(r#"{"drive_id": "b", "path_on_host": "/r", "is_root_device": true}"#)
            ),
            "The id from the path does not match the id from the body!"
        );
        assert_eq!(
            fault("PUT", "/drives", Some("{}")),
            "The ID cannot be empty."
        );
        assert!(fault("PUT", "/drives/a-b", Some("{}")).contains("alphanumeric"));
        assert_eq!(
            fault("PATCH", "/machine-config", Some("{}")),
            "Empty PATCH request."
        );
        assert_eq!(
            fault("PUT", "/snapshot", Some("{}")),
            "Missing snapshot operation type."
        );
        assert!(fault(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart", "x": 1}"#)
        )
        .contains("unknown field `x`"));
        assert!(fault("PUT", "/balloon", Some("{}")).contains("/balloon endpoint is not supported"));
        assert!(fault("GET", "/mmds", None).contains("/mmds endpoint is not supported"));
        assert!(fault(
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth1", "host_dev_name": "t"}"#)
        )
        .contains("[eth0] does not match the id from the body [eth1]"));
    }
}
