// Host-side check of libvlm_edge_plugins.so, with no TensorRT library and no GPU: it loads the
// library with dlopen as IPluginRegistry::loadLibrary does, takes the creator from getCreators,
// and calls the plugin the way TensorRT's builder would up to enqueue (which needs a GPU):
// fields as the ONNX parser passes them, shape inference through an expression builder that
// evaluates constants, format combinations, configurePlugin, and the serialized fields round trip.
//
//   g++ -std=c++17 -I$TENSORRT_ROOT/include -I$CUDA/include trt_plugin_check.cpp -ldl -o check
//   ./check build/libvlm_edge_plugins.so            (exit 0 and "ok" when every check holds)
//
// Built and run by tests/test_kernel_build.py where TensorRT's headers are.

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

namespace
{

int failures = 0;

void expect(bool ok, std::string const& what)
{
    if (!ok)
    {
        std::printf("FAIL %s\n", what.c_str());
        ++failures;
    }
}

// ---- an expression builder over constants (TensorRT's own is inside libnvinfer) -------------
struct ConstantImpl : apiv::VDimensionExpr
{
    int64_t value{0};
    bool isConstant() const override { return true; }
    int64_t getConstantValue() const override { return value; }
    bool isSizeTensor() const override { return false; }
};

struct Constant : IDimensionExpr
{
    explicit Constant(int64_t v)
    {
        impl.value = v;
        mImpl = &impl;
    }
    ConstantImpl impl;
};

struct BuilderImpl : apiv::VExprBuilder
{
    std::deque<Constant> pool;
    IDimensionExpr const* constant(int64_t value) override { return &pool.emplace_back(value); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        int64_t const x = a.getConstantValue();
        int64_t const y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return constant(x + y);
        case DimensionOperation::kPROD: return constant(x * y);
        case DimensionOperation::kMAX: return constant(x > y ? x : y);
        case DimensionOperation::kMIN: return constant(x < y ? x : y);
        case DimensionOperation::kSUB: return constant(x - y);
        case DimensionOperation::kEQUAL: return constant(x == y);
        case DimensionOperation::kLESS: return constant(x < y);
        case DimensionOperation::kFLOOR_DIV: return constant(x / y);
        case DimensionOperation::kCEIL_DIV: return constant((x + y - 1) / y);
        }
        return nullptr;
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
};

struct Builder : IExprBuilder
{
    Builder() { mImpl = &impl; }
    BuilderImpl impl;
};

// ---- helpers -----------------------------------------------------------------------------------
Dims dims(std::vector<int64_t> const& d)
{
    Dims out{};
    out.nbDims = static_cast<int32_t>(d.size());
    for (size_t i = 0; i < d.size(); ++i)
        out.d[i] = d[i];
    return out;
}

DynamicPluginTensorDesc desc(std::vector<int64_t> const& d, DataType type, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc out{};
    out.desc.dims = dims(d);
    out.desc.type = type;
    out.desc.format = format;
    out.min = out.max = out.opt = out.desc.dims;
    return out;
}

struct Fields
{
    Fields(int32_t r, std::string o, float e = 1e-5F)
        : ratio(r)
        , order(std::move(o))
        , eps(e)
    {
    }

    int32_t ratio;
    std::string order;
    float eps;
    std::string version{"1"};
    std::vector<PluginField> list;
    PluginFieldCollection collection{};

    // as TensorRT's ONNX parser passes a node's attributes: ints as INT32, strings as CHAR
    PluginFieldCollection const* get()
    {
        list = {PluginField("ratio", &ratio, PluginFieldType::kINT32, 1),
            PluginField("order", order.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(order.size())),
            PluginField("eps", &eps, PluginFieldType::kFLOAT32, 1),
            PluginField("plugin_version", version.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(version.size()))};
        collection.nbFields = static_cast<int32_t>(list.size());
        collection.fields = list.data();
        return &collection;
    }
};

std::vector<int64_t> outputShape(IPluginV3* plugin, std::vector<int64_t> const& x, int64_t width)
{
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    Builder builder;
    DimsExprs in[3]{};
    in[0].nbDims = static_cast<int32_t>(x.size());
    for (size_t i = 0; i < x.size(); ++i)
        in[0].d[i] = builder.constant(x[i]);
    for (int k = 1; k < 3; ++k)
    {
        in[k].nbDims = 1;
        in[k].d[0] = builder.constant(width);
    }
    DimsExprs out[1]{};
    if (build->getOutputShapes(in, 3, nullptr, 0, out, 1, builder) != 0)
        return {};
    std::vector<int64_t> shape;
    for (int32_t i = 0; i < out[0].nbDims; ++i)
        shape.push_back(out[0].d[i]->getConstantValue());
    return shape;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::printf("usage: %s libvlm_edge_plugins.so\n", argv[0]);
        return 2;
    }
    void* handle = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr)
    {
        std::printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    expect(getCreators != nullptr, "getCreators is exported");
    if (getCreators == nullptr)
        return 1;
    expect(dlsym(handle, "setLoggerFinder") != nullptr, "setLoggerFinder is exported");
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    expect(count == 1, "one creator");
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    expect(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1, "the creator is an IPluginCreatorV3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    expect(std::strcmp(creator->getPluginName(), "VlmEdgeDownsampleLayerNorm") == 0, "plugin name");
    expect(std::strcmp(creator->getPluginVersion(), "1") == 0 && std::strcmp(creator->getPluginNamespace(), "") == 0,
        "version 1, empty namespace");
    expect(creator->getFieldNames()->nbFields == 3, "fields ratio, order, eps");

    // shapes: [B, S, S, C] -> [B, ceil(S/r)^2, r*r*C]
    struct Case
    {
        int32_t ratio;
        int64_t batch, side, channels, tokens;
    };
    for (Case const& c : {Case{2, 8, 27, 1152, 196}, Case{2, 1, 28, 1152, 196}, Case{3, 8, 27, 1152, 81},
             Case{3, 1, 28, 48, 100}, Case{2, 64, 5, 48, 9}})
    {
        Fields fields{c.ratio, "row_major"};
        IPluginV3* plugin = creator->createPlugin("ds", fields.get(), TensorRTPhase::kBUILD);
        expect(plugin != nullptr, "createPlugin from the ONNX attributes");
        if (plugin == nullptr)
            continue;
        int64_t const width = c.ratio * c.ratio * c.channels;
        std::vector<int64_t> const want{c.batch, c.tokens, width};
        expect(outputShape(plugin, {c.batch, c.side, c.side, c.channels}, width) == want,
            "output shape for S=" + std::to_string(c.side) + " r=" + std::to_string(c.ratio));
        expect(outputShape(plugin, {c.batch, c.side * c.side, c.channels}, width).empty(), "a rank-3 x is refused");

        auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
        expect(build->getNbOutputs() == 1, "one output");
        DataType types[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
        DataType outType = DataType::kFLOAT;
        expect(build->getOutputDataTypes(&outType, 1, types, 3) == 0 && outType == DataType::kHALF, "output dtype = x's");

        // formats: one dtype of fp32/fp16/bf16 for all four tensors, linear
        for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            DynamicPluginTensorDesc io[4] = {desc({c.batch, c.side, c.side, c.channels}, t), desc({width}, t),
                desc({width}, t), desc(want, t)};
            for (int32_t pos = 0; pos < 4; ++pos)
                expect(build->supportsFormatCombination(pos, io, 3, 1), "takes a linear dtype at " + std::to_string(pos));
            expect(build->configurePlugin(io, 3, io + 3, 1) == 0, "configurePlugin with matching weights");
        }
        DynamicPluginTensorDesc mixed[4] = {desc({c.batch, c.side, c.side, c.channels}, DataType::kHALF),
            desc({width}, DataType::kFLOAT), desc({width}, DataType::kHALF), desc(want, DataType::kHALF)};
        expect(!build->supportsFormatCombination(1, mixed, 3, 1), "mixed dtypes are refused");
        DynamicPluginTensorDesc int8[4] = {desc({c.batch, c.side, c.side, c.channels}, DataType::kINT8),
            desc({width}, DataType::kINT8), desc({width}, DataType::kINT8), desc(want, DataType::kINT8)};
        expect(!build->supportsFormatCombination(0, int8, 3, 1), "int8 is refused");
        DynamicPluginTensorDesc chw[4] = {desc({c.batch, c.side, c.side, c.channels}, DataType::kHALF, TensorFormat::kCHW2),
            desc({width}, DataType::kHALF), desc({width}, DataType::kHALF), desc(want, DataType::kHALF)};
        expect(!build->supportsFormatCombination(0, chw, 3, 1), "non-linear formats are refused");
        DynamicPluginTensorDesc narrow[4] = {desc({c.batch, c.side, c.side, c.channels}, DataType::kFLOAT),
            desc({width - 1}, DataType::kFLOAT), desc({width}, DataType::kFLOAT), desc(want, DataType::kFLOAT)};
        expect(build->configurePlugin(narrow, 3, narrow + 3, 1) != 0, "configurePlugin refuses a short weight");

        // the serialized fields make the same plugin (what deserializing an engine does)
        auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        IPluginV3* again = creator->createPlugin("ds", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
        expect(again != nullptr && outputShape(again, {c.batch, c.side, c.side, c.channels}, width) == want,
            "the serialized fields round trip");
        IPluginV3* copy = plugin->clone();
        expect(copy != nullptr && outputShape(copy, {c.batch, c.side, c.side, c.channels}, width) == want, "clone");
        auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
        expect(std::strcmp(core->getPluginName(), "VlmEdgeDownsampleLayerNorm") == 0, "core capability");
        delete again;
        delete copy;
        delete plugin;
    }

    // bad fields are refused, not built
    Fields ratio4{4, "column_major"};
    expect(creator->createPlugin("ds", ratio4.get(), TensorRTPhase::kBUILD) == nullptr, "ratio 4 is refused");
    Fields diagonal{2, "diagonal"};
    expect(creator->createPlugin("ds", diagonal.get(), TensorRTPhase::kBUILD) == nullptr, "an unknown order is refused");
    Fields zeroEps{2, "column_major", 0.0F};
    expect(creator->createPlugin("ds", zeroEps.get(), TensorRTPhase::kBUILD) == nullptr, "eps 0 is refused");
    double wide = 1e-5;
    PluginField doubleEps("eps", &wide, PluginFieldType::kFLOAT64, 1);
    PluginFieldCollection doubleEpsFields{1, &doubleEps};
    expect(creator->createPlugin("ds", &doubleEpsFields, TensorRTPhase::kBUILD) == nullptr,
        "an eps of another type is refused, not defaulted");
    int64_t ratio3 = 3;
    PluginField ratio64("ratio", &ratio3, PluginFieldType::kINT64, 1);
    PluginFieldCollection ratio64Fields{1, &ratio64};
    IPluginV3* fromInt64 = creator->createPlugin("ds", &ratio64Fields, TensorRTPhase::kBUILD);
    expect(fromInt64 != nullptr && outputShape(fromInt64, {1, 27, 27, 48}, 432) == std::vector<int64_t>{1, 81, 432},
        "an int64 ratio is taken");
    delete fromInt64;

    if (failures == 0)
        std::printf("ok\n");
    return failures == 0 ? 0 : 1;
}
