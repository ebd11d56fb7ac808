"""Device posture reports in the store (`trust_devices`): one row per device, the newest report,
written with the change feed's `trust-devices` topic bumped in the same transaction so every
replica reloads its `DeviceIndex` (device.py). Apart from device.py so that loading a bundle
(which names the `device` signal) does not import the store."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from trustplane.store.feed import announce
from trustplane.store.tables import change_versions, trust_devices
from trustplane.trust.device import TOPIC, Posture

_T = trust_devices.c


def save_posture(engine: Engine, posture: Posture) -> bool:
    """Store `posture` as its device's report; True when the device was new. An older report
    (by `reported_at`) than the one stored is kept out: integrations retry and reorder."""
    values = posture.as_dict()
    values["owner"] = posture.owner
    with engine.begin() as connection:
        known = connection.execute(
            select(_T.reported_at).where(_T.device_id == posture.device_id)
        ).first()
        if known is None:
            try:
                with connection.begin_nested():
                    connection.execute(insert(trust_devices).values(**values))
            except IntegrityError:  # another replica stored its first report just now
                return save_posture_again(connection, posture, values)
        elif known.reported_at <= posture.reported_at:
            connection.execute(
                update(trust_devices).where(_T.device_id == posture.device_id).values(**values)
            )
        else:
            return False
        announce(connection, TOPIC)
    return known is None


def save_posture_again(connection: Connection, posture: Posture, values: dict[str, object]) -> bool:
    """The insert lost a race: keep whichever report is newer, as `save_posture` does."""
    stored = connection.execute(
        select(_T.reported_at).where(_T.device_id == posture.device_id)
    ).scalar_one()
    if stored <= posture.reported_at:
        connection.execute(
            update(trust_devices).where(_T.device_id == posture.device_id).values(**values)
        )
        announce(connection, TOPIC)
    return False


def get_posture(engine: Engine, device_id: str) -> Posture | None:
    with engine.connect() as connection:
        row = connection.execute(select(trust_devices).where(_T.device_id == device_id)).first()
    return None if row is None else _posture(row)


def forget_device(engine: Engine, device_id: str) -> bool:
    with engine.begin() as connection:
        gone = connection.execute(delete(trust_devices).where(_T.device_id == device_id)).rowcount
        if gone:
            announce(connection, TOPIC)
    return bool(gone)


def all_postures(engine: Engine) -> tuple[int, list[Posture]]:
    """The feed version of the `trust-devices` topic and every report, read together."""
    with engine.connect() as connection:
        version = connection.execute(
            select(change_versions.c.version).where(change_versions.c.topic == TOPIC)
        ).scalar()
        rows = connection.execute(select(trust_devices)).all()
    return int(version or 0), [_posture(row) for row in rows]


def _posture(row: object) -> Posture:
    r = row._mapping  # type: ignore[attr-defined]
    return Posture(
        device_id=r["device_id"],
        disk_encrypted=bool(r["disk_encrypted"]),
        os_patch_age_days=int(r["os_patch_age_days"]),
        edr_running=bool(r["edr_running"]),
        screen_lock=bool(r["screen_lock"]),
        managed=bool(r["managed"]),
        reported_at=float(r["reported_at"]),
        received_at=float(r["received_at"]),
        reported_by=r["reported_by"],
        certificate_serial=r["certificate_serial"],
        owner=r["owner"] or "",
    )
