"""Write the viewer colour tables of a model beside its label maps (see :mod:`mrseg_cohort.colortables`)."""

from __future__ import annotations

from mrseg_cohort.colortables import itksnap_label_description, slicer_ctbl
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.labels import LabelMap


def color_table_uris(labels_root_uri: str, model_name: str) -> dict[str, str]:
    """Where the tables go: ``<labels_root>/<model>.ctbl`` (3D Slicer) and
    ``<labels_root>/<model>.label_description.txt`` (ITK-SNAP: Segmentation > Import Label Descriptions)."""
    return {"slicer": join_uri(labels_root_uri, f"{model_name}.ctbl"),
            "itksnap": join_uri(labels_root_uri, f"{model_name}.label_description.txt")}


def write_color_tables(store: Store, labels_root_uri: str, label_map: LabelMap, model_name: str) -> dict[str, str]:
    """Publish both colour tables of ``label_map`` (atomic whole-file writes; idempotent).

    Returns:
        ``{"slicer": uri, "itksnap": uri}`` of the files written.
    """
    uris = color_table_uris(labels_root_uri, model_name)
    title = f"{label_map.name} (model {model_name})"
    store.write_bytes(uris["slicer"], slicer_ctbl(label_map, title).encode())
    store.write_bytes(uris["itksnap"], itksnap_label_description(label_map, title).encode())
    return uris
