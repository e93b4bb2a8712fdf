"""Phantom participants as UK Biobank field-20201 zips (``<eid>_20201_<instance>_0.zip``).

Each zip holds 6 stations x 4 Dixon contrasts = 24 series of ``<SOPInstanceUID>.dcm`` slices plus a
``manifest.cvs`` listing them (as the real release does). Stations 2-4 (chest and abdomen) are
breath-hold series ``Dixon_BH_17s_<c>``, the others ``Dixon_noBH_<c>``, ``<c>`` in ``in``, ``opp``,
``F``, ``W``; station k (1 = most superior) is acquired at 10:00 + k minutes, all four contrasts of a
station in the same acquisition.

Faults for tests: ``drop_series`` leaves series out; ``repeat_stations`` writes a station twice, the
first acquisition with halved (wrong) intensities and the repeat, acquired after the last station,
with the right ones (a reader must keep the later series).
"""

from __future__ import annotations

import numpy as np

from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.dicom_writer import SeriesHeader, encode_series, new_uid, zip_bytes
from mrseg_cohort.io.storage import Store, join_uri

SUFFIX = {"in": "in", "opp": "opp", "fat": "F", "water": "W"}
"""Our contrast name -> SeriesDescription suffix."""
BREATH_HOLD_STATIONS = (2, 3, 4)
START_S = 10 * 3600.0
STATION_INTERVAL_S = 60.0


def ukbb_zip_name(participant_id: str, visit: str) -> str:
    """``<eid>_20201_<instance>_0.zip``."""
    return f"{participant_id}_20201_{visit}_0.zip"


def series_description(contrast: str, station: int) -> str:
    """UK Biobank's SeriesDescription of ``contrast`` at station ``station`` (1-based)."""
    prefix = "Dixon_BH_17s" if station in BREATH_HOLD_STATIONS else "Dixon_noBH"
    return f"{prefix}_{SUFFIX[contrast]}"


def ukbb_zip_bytes(participant_id: str, visit: str, stations: dict[str, list[Volume]], seed: int = 0,
                   drop_series: tuple[tuple[str, int], ...] = (),
                   repeat_stations: tuple[int, ...] = ()) -> bytes:
    """The zip of one participant's visit.

    Args:
        stations: contrast (``in``, ``opp``, ``fat``, ``water``) -> station volumes, most superior
            first, integer-valued.
        drop_series: (contrast, station) pairs to leave out.
        repeat_stations: stations (1-based) acquired twice (see module docstring).
    """
    study = new_uid("study", seed, participant_id, visit)
    frame = new_uid("frame", seed, participant_id, visit)
    n = max(len(v) for v in stations.values())
    unknown = [k for k in repeat_stations if not 1 <= k <= n]
    if unknown:
        raise ValueError(f"repeat_stations {unknown} outside 1..{n}")
    acquisitions = [(k, START_S + k * STATION_INTERVAL_S, False) for k in range(1, n + 1)]
    acquisitions += [(k, START_S + (n + 1 + j) * STATION_INTERVAL_S, True) for j, k in enumerate(repeat_stations)]
    members: list[tuple[str, bytes]] = []
    listing = ["filename,patientid,seriesdescription,seriesnumber"]
    number = 0
    for k, acquired_s, is_repeat in acquisitions:
        degraded = k in repeat_stations and not is_repeat
        for contrast, volumes in stations.items():
            number += 1
            if (contrast, k) in drop_series:
                continue
            volume = volumes[k - 1]
            if degraded:
                volume = volume.with_array(np.floor(volume.array / 2))
            description = series_description(contrast, k)
            series_uid = new_uid("series", seed, participant_id, visit, contrast, k, is_repeat)
            header = SeriesHeader(participant_id, study, series_uid, frame, description, number, acquired_s,
                                  uid_seed=f"{seed}-{participant_id}-{visit}")
            files = encode_series(volume, header)
            members += files
            listing += [f"{name},{participant_id},{description},{number}" for name, _ in files]
    members.sort()  # by SOPInstanceUID: series interleave in the zip, as in the real release
    members.append(("manifest.cvs", ("\n".join(listing) + "\n").encode()))
    return zip_bytes(members)


def write_ukbb_zip(store: Store, folder_uri: str, participant_id: str, visit: str,
                   stations: dict[str, list[Volume]], seed: int = 0,
                   drop_series: tuple[tuple[str, int], ...] = (), repeat_stations: tuple[int, ...] = ()) -> str:
    """Publish the zip under ``folder_uri``; returns its URI."""
    uri = join_uri(folder_uri, ukbb_zip_name(participant_id, visit))
    store.write_bytes(uri, ukbb_zip_bytes(participant_id, visit, stations, seed, drop_series, repeat_stations))
    return uri
