/* Runs one AOTInductor package of the Tiny Faces network from C++, without Python.

   The packages are what the torch-cuda runner writes in mode "aoti" (export/aoti.py): one
   .pt2 per input shape, weights included, under <cache>/torch_aoti/<key>/NxCxHxW.pt2. Build
   against the libtorch of the torch that wrote them (the pip wheel ships it):

     TORCH=$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
     g++ -std=c++20 -O2 examples/aoti_run.cpp -o aoti_run \
         -I$TORCH/include -I$TORCH/include/torch/csrc/api/include \
         -L$TORCH/lib -Wl,-rpath,$TORCH/lib -ltorch -ltorch_cpu -lc10
     # a CUDA package also needs, kept although no symbol of theirs is referenced:
     #   -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed

   Usage: aoti_run PACKAGE.pt2 N C H W INPUT.f32 OUTPUT.f32
     INPUT.f32   N*C*H*W float32, the normalised network input (NCHW), e.g. numpy's tofile()
     OUTPUT.f32  gets the (N, 125, H', W') score map as float32; its shape is printed
   The shape must be the package's (a package named NxCxHxW.pt2 is checked against it; the
   generated code does not check). Exit status: 0 done, 1 error, 2 bad command line. */

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

static at::Tensor read_input(const std::string& path, const std::vector<int64_t>& shape) {
  at::Tensor input = at::empty(shape, at::kFloat);
  const auto bytes = static_cast<std::streamsize>(input.numel() * sizeof(float));
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw std::runtime_error("cannot open " + path);
  if (file.tellg() != bytes)
    throw std::runtime_error(path + " holds " + std::to_string(file.tellg()) + " bytes, the shape needs " +
                             std::to_string(bytes));
  file.seekg(0);
  if (!file.read(reinterpret_cast<char*>(input.data_ptr<float>()), bytes))
    throw std::runtime_error("cannot read " + path);
  return input;
}

static void write_output(const std::string& path, const at::Tensor& output) {
  const at::Tensor host = output.to(at::kCPU, at::kFloat).contiguous();
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(host.data_ptr<float>()),
             static_cast<std::streamsize>(host.numel() * sizeof(float)));
  if (!file) throw std::runtime_error("cannot write " + path);
}

// The package's loader; an error names the package (torch's own says "file open failed").
static std::unique_ptr<torch::inductor::AOTIModelPackageLoader> open_package(const std::string& path) {
  errno = 0;
  if (!std::ifstream(path, std::ios::binary))
    throw std::runtime_error("cannot open package " + path + ": " +
                             (errno ? std::strerror(errno) : "unreadable"));
  try {
    return std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error("cannot load package " + path + ": " + e.what_without_backtrace());
  }
}

// "2x3x32x48" for {2, 3, 32, 48}: the name the runner gives the package of that shape.
static std::string shape_name(const std::vector<int64_t>& shape) {
  std::string name;
  for (int64_t d : shape) name += (name.empty() ? "" : "x") + std::to_string(d);
  return name;
}

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s PACKAGE.pt2 N C H W INPUT.f32 OUTPUT.f32\n", argv[0]);
    return 2;
  }
  std::vector<int64_t> shape;
  for (int i = 2; i < 6; ++i) {
    std::size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(argv[i], &used);
    } catch (const std::exception&) {
    }
    if (used == 0 || argv[i][used] != '\0' || value < 1) {
      std::fprintf(stderr, "aoti_run: error: %s is not a positive integer (N C H W)\n", argv[i]);
      return 2;
    }
    shape.push_back(value);
  }
  const std::string stem = std::filesystem::path(argv[1]).stem().string();
  if (stem.find_first_not_of("0123456789x") == std::string::npos && stem != shape_name(shape)) {
    std::fprintf(stderr, "aoti_run: error: %s is the package of input shape %s, not %s\n", argv[1],
                 stem.c_str(), shape_name(shape).c_str());
    return 2;
  }
  try {
    const auto loader = open_package(argv[1]);
    const std::string device = loader->get_metadata()["AOTI_DEVICE_KEY"];  // "cpu" or "cuda"
    at::Tensor input = read_input(argv[6], shape).to(c10::Device(device));
    const std::vector<at::Tensor> outputs = loader->run({input});
    if (outputs.size() != 1) throw std::runtime_error("the package returned " +
                                                      std::to_string(outputs.size()) + " outputs, expected 1");
    write_output(argv[7], outputs[0]);
    std::printf("%s: score map", device.c_str());
    for (int64_t d : outputs[0].sizes()) std::printf(" %lld", static_cast<long long>(d));
    std::printf("\n");
  } catch (const c10::Error& e) {  // torch's: its message without the C++ backtrace
    std::fprintf(stderr, "aoti_run: error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aoti_run: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
