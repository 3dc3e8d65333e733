"""mmviz.mapdata: what the WebGL map receives and sends back, checked without a browser."""
from __future__ import annotations

import base64
import struct

import numpy as np
import pyarrow as pa
import pytest

from mmviz import mapdata
from mmviz.mapdata import MapFrame

COLOURS = ["#1f77b4", "#ff7f0e"]


def test_frame_keeps_aspect_ratio_and_maps_the_longer_side_to_unit():
    # 10 wide, 2 tall, centred at (6, -1)
    xy = np.array([[1.0, -2.0], [11.0, 0.0], [6.0, -1.0], [3.0, -1.5]])
    frame = MapFrame.fit(xy)
    assert frame.centre == (6.0, -1.0) and frame.half == 5.0
    ndc = frame.to_ndc(xy)
    assert ndc.dtype == np.float32
    np.testing.assert_allclose(ndc, [[-1, -0.2], [1, 0.2], [0, 0], [-0.6, -0.1]], atol=1e-7)
    # one scale for both axes: every distance shrinks by the same factor
    d_data = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    d_ndc = np.linalg.norm(ndc[:, None].astype(np.float64) - ndc[None], axis=-1)
    np.testing.assert_allclose(d_ndc, d_data / 5.0, atol=1e-6)
    np.testing.assert_allclose(frame.from_ndc(ndc), xy, atol=1e-5)


def test_frame_of_tall_data_spans_y():
    xy = np.array([[0.0, 0.0], [1.0, 8.0]])
    ndc = MapFrame.fit(xy).to_ndc(xy)
    np.testing.assert_allclose(ndc, [[-0.125, -1], [0.125, 1]])


def test_frame_of_one_point_and_of_nothing():
    assert MapFrame.fit(np.array([[3.0, 4.0]])).to_ndc([[3.0, 4.0]]).tolist() == [[0.0, 0.0]]
    assert MapFrame.fit(np.zeros((0, 2))) == MapFrame((0.0, 0.0), 1.0)


def test_positions_must_be_finite_pairs():
    with pytest.raises(ValueError, match="row 2 is not finite"):
        MapFrame.fit(np.array([[0, 0], [1, 1], [np.nan, 1], [np.inf, 0]]))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        MapFrame.fit(np.zeros((4, 3)))


def test_categories_take_the_smallest_unsigned_dtype():
    codes = mapdata.encode_categories(np.array([0, 1, 1, 0]), 4, ["image", "caption"], COLOURS)
    assert codes.dtype == np.uint8 and codes.tolist() == [0, 1, 1, 0]
    many = [f"c{i}" for i in range(300)]
    big = mapdata.encode_categories(np.array([0, 299]), 2, many, ["#000"] * 300)
    assert big.dtype == np.uint16 and big.tolist() == [0, 299]
    # integral floats (pandas codes often arrive as float) are accepted
    assert mapdata.encode_categories(np.array([1.0, 0.0]), 2, ["a", "b"], COLOURS).tolist() == [1, 0]


@pytest.mark.parametrize("codes, labels, colours, message", [
    ([0, 2], ["a", "b"], COLOURS, "category of point 1 is 2, outside 0..1"),
    ([0, -1], ["a", "b"], COLOURS, "category of point 1 is -1"),
    ([0.5, 1], ["a", "b"], COLOURS, "must be integers"),
    ([0, 1], ["a", "b"], ["#1f77b4"], "2 categories but 1 colours"),
    ([0, 1], ["a", "b"], ["#1f77b4", "orange"], "colour 1 .'orange'. is not a hex colour"),
    ([0, 1, 1], ["a", "b"], COLOURS, r"one entry per point, shape \(2,\)"),
])
def test_bad_categories_say_what_is_wrong(codes, labels, colours, message):
    with pytest.raises(ValueError, match=message):
        mapdata.encode_categories(np.array(codes), 2, labels, colours)


def test_category_colours_are_valid_and_distinct_up_to_the_palette():
    colours = mapdata.category_colours(60)
    assert colours[:2] == ["#1f77b4", "#ff7f0e"]
    assert len(set(colours)) == 60
    # accepted by the encoder as they are
    mapdata.encode_categories(np.arange(60), 60, [str(i) for i in range(60)], colours)
    assert mapdata.category_colours(61)[60] == colours[0]


def test_values_scale_to_unit_interval():
    v01, lo, hi = mapdata.scale_values(np.array([2.0, 4.0, 3.0, 10.0]), 4)
    assert (lo, hi) == (2.0, 10.0)
    np.testing.assert_allclose(v01, [0, 0.25, 0.125, 1])
    assert v01.dtype == np.float32
    flat, lo, hi = mapdata.scale_values(np.full(3, 7.0), 3)
    assert flat.tolist() == [0, 0, 0] and lo == hi == 7.0
    with pytest.raises(ValueError, match="value of point 1 is nan"):
        mapdata.scale_values(np.array([1.0, np.nan]), 2)


def test_lines_are_checked_index_pairs():
    seg = mapdata.check_lines(np.array([[0, 3], [2, 1]]), 4)
    assert seg.dtype == np.uint32 and seg.tolist() == [[0, 3], [2, 1]]
    assert mapdata.check_lines(None, 4) is None
    assert mapdata.check_lines(np.zeros((0, 2), int), 4).shape == (0, 2)
    with pytest.raises(ValueError, match=r"line 1 joins points \[2, 4\], but the map has 4 points"):
        mapdata.check_lines(np.array([[0, 1], [2, 4]]), 4)
    with pytest.raises(ValueError, match=r"shape \(m, 2\)"):
        mapdata.check_lines(np.array([0, 1, 2]), 4)
    with pytest.raises(ValueError, match="integers"):
        mapdata.check_lines(np.array([[0.0, 1.0]]), 4)
    too_many = np.zeros((mapdata.MAX_LINES + 1, 2), int)
    with pytest.raises(ValueError, match="pass a sample"):
        mapdata.check_lines(too_many, 4)


def test_selected_indices_are_sorted_and_unique():
    assert mapdata.check_indices([5, 1, 5, 3], 6).tolist() == [1, 3, 5]
    assert mapdata.check_indices(None, 6) is None
    assert mapdata.check_indices([], 6).tolist() == []
    with pytest.raises(ValueError, match="selected index 6 is outside the map's 6 points"):
        mapdata.check_indices([1, 6], 6)


def test_selection_decodes_little_endian_uint32():
    # built by hand, independently of encode_selection
    payload = {"n": 3, "b64": base64.b64encode(struct.pack("<3I", 70000, 2, 70000)).decode()}
    assert mapdata.decode_selection(payload, 70001).tolist() == [2, 70000]
    assert mapdata.decode_selection(None, 10) is None          # no selection event this run
    cleared = mapdata.decode_selection({"n": 0, "b64": ""}, 10)
    assert cleared is not None and cleared.size == 0           # the user cleared it


def test_selection_round_trip_and_bad_payloads():
    idx = np.array([9, 0, 4])
    assert mapdata.decode_selection(mapdata.encode_selection(idx), 10).tolist() == [0, 4, 9]
    with pytest.raises(ValueError, match="index 10 is outside the map's 10 points"):
        mapdata.decode_selection(mapdata.encode_selection([10]), 10)
    with pytest.raises(ValueError, match="says 2 points but carries 1"):
        mapdata.decode_selection({"n": 2, "b64": mapdata.encode_selection([1])["b64"]}, 10)
    with pytest.raises(ValueError, match="not a whole number"):
        mapdata.decode_selection({"b64": base64.b64encode(b"abc").decode()}, 10)
    with pytest.raises(ValueError, match="payload must be"):
        mapdata.decode_selection([1, 2], 10)


def test_points_table_is_nine_bytes_a_point():
    n = 1000
    rng = np.random.default_rng(0)
    ndc = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    codes = rng.integers(0, 2, n).astype(np.uint8)
    table = mapdata.points_table(ndc, codes)
    assert table.schema.names == ["x", "y", "c"]
    assert [f.type for f in table.schema] == [pa.float32(), pa.float32(), pa.uint8()]
    assert table.nbytes == 9 * n
    np.testing.assert_array_equal(table["x"].to_numpy(), ndc[:, 0])
    with_values = mapdata.points_table(ndc, codes, rng.uniform(0, 1, n))
    assert with_values.schema.field("v").type == pa.float32() and with_values.nbytes == 13 * n


def test_build_map_config():
    xy = np.array([[0.0, 0.0], [4.0, 2.0], [2.0, 1.0]])
    payload = mapdata.build_map(xy, np.array([0, 1, 1]), ["image", "caption"], COLOURS,
                                arrow=((4.0, 2.0), (0.0, 0.0)), height=500, target="gap")
    cfg = payload.config
    assert cfg["n"] == 3 and cfg["target"] == "gap" and cfg["height"] == 500
    assert cfg["counts"] == [1, 2] and cfg["colour_by"] == "category"
    assert cfg["bbox"] == [-1.0, -0.5, 1.0, 0.5]
    assert cfg["arrow"]["from"] == [1.0, 0.5] and cfg["arrow"]["to"] == [-1.0, -0.5]
    assert cfg["arrow"]["labels"] == ["text centre", "image centre"]
    assert cfg["arrow"]["colours"] == ["#ff7f0e", "#1f77b4"]  # caption orange, image blue
    assert cfg["point_size"] == pytest.approx(mapdata.default_point_size(3))
    # the token follows the data: same data same token, one moved point a new one
    again = mapdata.build_map(xy.copy(), np.array([0, 1, 1]), ["image", "caption"], COLOURS, target="gap")
    moved = mapdata.build_map(xy + [[0, 0], [0, 0], [0.5, 0]], np.array([0, 1, 1]), ["image", "caption"],
                              COLOURS, target="gap")
    assert again.config["token"] == cfg["token"] != moved.config["token"]
    by_value = mapdata.build_map(xy, np.array([0, 1, 1]), ["a", "b"], COLOURS, values=np.array([1.0, 3.0, 2.0]))
    assert by_value.config["colour_by"] == "value" and by_value.config["value_range"] == [1.0, 3.0]
    assert by_value.points["v"].to_pylist() == [0.0, 1.0, 0.5]
    assert by_value.config["colormap"][0].lower() == "#440154"  # viridis starts dark purple


def test_point_size_shrinks_with_n_within_bounds():
    sizes = [mapdata.default_point_size(n) for n in (1, 1_000, 100_000, 1_000_000, 10**8)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == 8.0 and sizes[-1] == 2.0


def test_marks_and_hover_relays():
    marks = mapdata.build_marks(5, target="m", lines=np.array([[0, 4]]), selected=[3, 1])
    assert marks["lines"]["a"].to_pylist() == [0] and marks["lines"]["b"].to_pylist() == [4]
    assert marks["selected"]["i"].to_pylist() == [1, 3]
    empty = mapdata.build_marks(5, target="m")
    assert empty["lines"] is None and empty["selected"] is None
    assert empty["lines_token"] is None and empty["selected_token"] is None
    assert marks["selected_token"] != mapdata.build_marks(5, target="m", selected=[1])["selected_token"]
    hover = mapdata.build_hover(target="m", detail={"index": 2, "title": "Point 2", "text": "a cat",
                                                    "image": "data:image/png;base64,AAAA"})
    assert hover == {"overlay_for": "m", "hover": {"index": 2, "title": "Point 2", "text": "a cat",
                                                   "image": "data:image/png;base64,AAAA"}}
    with pytest.raises(ValueError, match="data:image"):
        mapdata.build_hover(target="m", detail={"index": 2, "image": "https://example.com/cat.png"})


def test_streamlit_sends_the_points_as_one_arrow_blob_not_json():
    """The data path the component relies on: Streamlit turns a top-level table of the data
    dict into a binary Arrow blob beside a small JSON part."""
    pytest.importorskip("streamlit")
    from streamlit.components.v2.bidi_component.serialization import serialize_mixed_data
    from streamlit.proto.BidiComponent_pb2 import BidiComponent

    n = 20_000
    xy = np.random.default_rng(1).normal(size=(n, 2))
    payload = mapdata.build_map(xy, np.arange(n) % 2, ["image", "caption"], COLOURS)
    proto = BidiComponent()
    serialize_mixed_data({"points": payload.points, "config": payload.config}, proto)
    blobs = list(proto.mixed.arrow_blobs.values())
    assert len(blobs) == 1
    assert 9 * n <= len(blobs[0].data) < 9 * n + 2_000   # columns plus a small Arrow header
    assert len(proto.mixed.json) < 1_000                  # the config only
    table = pa.ipc.open_stream(blobs[0].data).read_all()
    np.testing.assert_array_equal(table["x"].to_numpy(), payload.frame.to_ndc(xy)[:, 0])


def test_pairs_layout_stacks_images_then_captions():
    image_xy = np.array([[0.0, 0.0], [2.0, 0.0]])
    text_xy = np.array([[0.0, 1.0], [2.0, 1.0], [2.0, 3.0]])
    owner = np.array([0, 1, 1])
    lay = mapdata.pairs_layout(image_xy, text_xy, owner, max_lines=2)
    assert lay.xy.tolist() == [[0, 0], [2, 0], [0, 1], [2, 1], [2, 3]]
    assert lay.category.tolist() == [0, 0, 1, 1, 1] and lay.n_images == 2
    assert lay.lines.tolist() == [[0, 2], [1, 3]]          # the first two captions to their images
    assert lay.arrow == ((4 / 3, 5 / 3), (1.0, 0.0))        # caption centre -> image centre
    with pytest.raises(ValueError, match="refers to image 2, but there are 2 images"):
        mapdata.pairs_layout(image_xy, text_xy, np.array([0, 1, 2]))


def test_selection_to_pairs_and_back():
    owner = np.array([0, 1, 1, 2])  # 3 images (points 0-2), 4 captions (points 3-6)
    # image 0 picked directly, caption 2 (point 5) picks image 1
    assert mapdata.picked_images(np.array([0, 5]), 3, owner).tolist() == [0, 1]
    assert mapdata.picked_images(np.array([], int), 3, owner).tolist() == []
    # image 1 with its captions 1 and 2 (points 4, 5)
    assert mapdata.pair_points(np.array([1]), 3, owner).tolist() == [1, 4, 5]
