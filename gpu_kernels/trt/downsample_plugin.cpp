// TensorRT 10 plugin (IPluginV3) for the fused visual-token downsample + LayerNorm.
//
// A thin shell over the CUDA kernel (gpu_kernels/cuda/downsample.cuh): shape inference, the
// formats it takes, its fields, and enqueue. Written to what TensorRT 10.3 (JetPack 6.1/6.2)
// has; nothing newer is used.
//
//   ONNX node  vlm_edge.VlmEdgeDownsampleLayerNorm (gpu_kernels/schema.py), which TensorRT's ONNX
//              parser maps to this plugin by op type, version "1", empty namespace
//   inputs     x [B, S, S, C], weight [r*r*C], bias [r*r*C]     (one dtype: fp32, fp16 or bf16)
//   output     y [B, ceil(S/r)^2, r*r*C]
//   fields     ratio (int32: 2 or 3), order (int32 0 column-major / 1 row-major, or the string
//              "column_major" / "row_major"), eps (float32)
//
// The library exports getCreators() and setLoggerFinder(), so it loads with
// IPluginRegistry::loadLibrary and `trtexec --dynamicPlugins=libvlm_edge_plugins.so`; messages go
// to TensorRT's logger once it hands one over, to stderr before.

#include "../cuda/downsample.cuh"

#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace vlm_edge
{
namespace trt
{
namespace
{

constexpr char const* kPluginName = "VlmEdgeDownsampleLayerNorm";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

ILoggerFinder* gLoggerFinder = nullptr;  // set by TensorRT through setLoggerFinder()

void report(char const* what)
{
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    std::string const message = std::string(kPluginName) + ": " + what;
    if (logger != nullptr)
        logger->log(ILogger::Severity::kERROR, message.c_str());
    else
        std::fprintf(stderr, "[vlm-edge] %s\n", message.c_str());
}

struct Params
{
    int32_t ratio{2};
    int32_t order{static_cast<int32_t>(TokenOrder::kColumnMajor)};
    float eps{1e-5F};
};

bool toDtype(DataType type, Dtype& out)
{
    switch (type)
    {
    case DataType::kFLOAT: out = Dtype::kFloat32; return true;
    case DataType::kHALF: out = Dtype::kFloat16; return true;
    case DataType::kBF16: out = Dtype::kBFloat16; return true;
    default: return false;
    }
}

class DownsamplePlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime
{
public:
    explicit DownsamplePlugin(Params params)
        : mParams(params)
    {
    }

    DownsamplePlugin(DownsamplePlugin const& other)
        : mParams(other.mParams)
    {
    }

    // ---- IPluginV3 ------------------------------------------------------------------------------
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) DownsamplePlugin(*this);
    }

    // ---- core -----------------------------------------------------------------------------------
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // ---- build ----------------------------------------------------------------------------------
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t getOutputDataTypes(
        DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        if (nbOutputs != 1 || nbInputs != 3)
            return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    }

    // [B, S, S, C] -> [B, ceil(S/r)^2, r*r*C]; B and S may be dynamic.
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 4)
        {
            report("expects x [B, S, S, C], weight and bias");
            return -1;
        }
        DimsExprs const& x = inputs[0];
        IDimensionExpr const* ratio = exprBuilder.constant(mParams.ratio);
        IDimensionExpr const* half = exprBuilder.operation(DimensionOperation::kCEIL_DIV, *x.d[1], *ratio);
        outputs[0].nbDims = 3;
        outputs[0].d[0] = x.d[0];
        outputs[0].d[1] = exprBuilder.operation(DimensionOperation::kPROD, *half, *half);
        outputs[0].d[2] = exprBuilder.operation(
            DimensionOperation::kPROD, *exprBuilder.constant(mParams.ratio * mParams.ratio), *x.d[3]);
        return 0;
    }

    // Every tensor linear, one dtype for all four: fp32, fp16 or bf16.
    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos >= 4)
            return false;
        PluginTensorDesc const& desc = inOut[pos].desc;
        Dtype dtype;
        if (desc.format != TensorFormat::kLINEAR || !toDtype(desc.type, dtype))
            return false;
        return pos == 0 || desc.type == inOut[0].desc.type;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
        int32_t nbOutputs) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 1 || in[0].desc.dims.nbDims != 4)
            return -1;
        Dims const& x = in[0].desc.dims;
        if (x.d[3] >= 0 && !downsampleFits(static_cast<int>(x.d[3]), mParams.ratio))
        {
            report("ratio * ratio * C fp32 values do not fit one block's shared memory on this GPU");
            return -1;
        }
        if (x.d[1] >= 0 && x.d[2] >= 0 && x.d[1] != x.d[2])
        {
            report("x must be a square grid [B, S, S, C]");
            return -1;
        }
        int64_t const width = static_cast<int64_t>(mParams.ratio) * mParams.ratio * x.d[3];
        for (int32_t k = 1; k < 3; ++k)
        {
            Dims const& p = in[k].desc.dims;
            if (x.d[3] >= 0 && (p.nbDims != 1 || (p.d[0] >= 0 && p.d[0] != width)))
            {
                report("weight and bias must be [ratio * ratio * C]");
                return -1;
            }
        }
        return 0;
    }

    // ---- runtime --------------------------------------------------------------------------------
    int32_t onShapeChange(
        PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept override
    {
        return nbInputs == 3 && in[0].dims.nbDims == 4 && in[0].dims.d[1] == in[0].dims.d[2] ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
        void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override
    {
        Dims const& x = inputDesc[0].dims;
        Dtype dtype;
        if (!toDtype(inputDesc[0].type, dtype))
            return -1;
        if (x.d[0] == 0)
            return 0;  // an empty batch
        DownsampleShape const shape{static_cast<int>(x.d[0]), static_cast<int>(x.d[1]), static_cast<int>(x.d[3]),
            mParams.ratio};
        cudaError_t const err = downsampleLayerNorm(dtype, inputs[0], inputs[1], inputs[2], outputs[0], shape,
            static_cast<TokenOrder>(mParams.order), mParams.eps, stream);
        if (err != cudaSuccess)
        {
            report(cudaGetErrorString(err));
            return -1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }

    // The fields point into this object's parameters: valid while the plugin lives.
    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mFields[0] = PluginField("ratio", &mParams.ratio, PluginFieldType::kINT32, 1);
        mFields[1] = PluginField("order", &mParams.order, PluginFieldType::kINT32, 1);
        mFields[2] = PluginField("eps", &mParams.eps, PluginFieldType::kFLOAT32, 1);
        mCollection.nbFields = 3;
        mCollection.fields = mFields;
        return &mCollection;
    }

private:
    Params mParams;
    PluginField mFields[3];
    PluginFieldCollection mCollection{};
};

// order: an int32 (0 column-major, 1 row-major) or the ONNX attribute's string.
bool parseOrder(PluginField const& field, int32_t& order)
{
    if (field.type == PluginFieldType::kINT32 && field.length == 1)
    {
        order = *static_cast<int32_t const*>(field.data);
        return order == 0 || order == 1;
    }
    if (field.type == PluginFieldType::kCHAR)
    {
        std::string value(static_cast<char const*>(field.data), static_cast<size_t>(field.length));
        value = value.substr(0, value.find('\0'));  // the length may or may not count a terminator
        if (value == "column_major")
            order = 0;
        else if (value == "row_major")
            order = 1;
        else
            return false;
        return true;
    }
    return false;
}

class DownsamplePluginCreator : public IPluginCreatorV3One
{
public:
    DownsamplePluginCreator()
    {
        mFieldNames.emplace_back("ratio", nullptr, PluginFieldType::kINT32, 1);
        mFieldNames.emplace_back("order", nullptr, PluginFieldType::kCHAR, 0);  // or kINT32 0 / 1
        mFieldNames.emplace_back("eps", nullptr, PluginFieldType::kFLOAT32, 1);
        mCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
        mCollection.fields = mFieldNames.data();
    }

    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override
    {
        Params params;
        for (int32_t k = 0; fc != nullptr && k < fc->nbFields; ++k)
        {
            PluginField const& field = fc->fields[k];
            if (field.name == nullptr || field.data == nullptr)
                continue;
            std::string const name(field.name);
            if (name == "ratio")
            {
                if (field.type == PluginFieldType::kINT32 && field.length == 1)
                    params.ratio = *static_cast<int32_t const*>(field.data);
                else if (field.type == PluginFieldType::kINT64 && field.length == 1)
                    params.ratio = static_cast<int32_t>(*static_cast<int64_t const*>(field.data));
                else
                    params.ratio = 0;  // refused below
            }
            else if (name == "order" && !parseOrder(field, params.order))
            {
                report("field order must be column_major (0) or row_major (1)");
                return nullptr;
            }
            else if (name == "eps")
            {
                if (field.type != PluginFieldType::kFLOAT32 || field.length != 1)
                {
                    report("field eps must be one float32");
                    return nullptr;
                }
                params.eps = *static_cast<float const*>(field.data);
            }
            // other fields (the ONNX parser's plugin_version, plugin_namespace) carry no parameters
        }
        if (params.ratio != 2 && params.ratio != 3)
        {
            report("field ratio must be one int32: 2 or 3");
            return nullptr;
        }
        if (!(params.eps > 0.0F))
        {
            report("field eps must be positive");
            return nullptr;
        }
        return new (std::nothrow) DownsamplePlugin(params);
    }

private:
    std::vector<PluginField> mFieldNames;
    PluginFieldCollection mCollection{};
};

} // namespace
} // namespace trt
} // namespace vlm_edge

// The entry points IPluginRegistry::loadLibrary and trtexec --dynamicPlugins look for.
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder)
{
    vlm_edge::trt::gLoggerFinder = finder;
}

extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static vlm_edge::trt::DownsamplePluginCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
