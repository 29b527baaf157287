"""Jetson device probes, telemetry, camera sources and the camera app (docs/jetson.md).

    sources.py     frames by URI: files, folders, v4l2://, csi://, rtsp:// (reconnects)
    camera.py      the camera app over the runtime's pipelined stream_frames: log, alerts, prompt changes
    web.py         vlm-camera --web: the live page (stdlib HTTP)
    webguard.py    who may use the page (Host, Origin, key) and what a client may hold (limits)
    device.py      vlm-jetson info: module, L4T/JetPack, power mode, versions, memory, engine fit
    telemetry.py   tegrastats and INA3221 power rails; PowerMeter for vlm-bench --power
    cli.py         vlm-camera, vlm-jetson, vlm-bench

No torch: a camera app starts with numpy, OpenCV and ONNX Runtime or TensorRT.
"""
