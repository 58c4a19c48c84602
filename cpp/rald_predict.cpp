// rald_predict: classify a batch of face images with a rald_fast AOTInductor package (.pt2) or a
// TorchScript archive (.ts, deprecated by torch but loadable by libtorch builds that cannot load this
// torch's .pt2).
//
//   rald_predict MODEL.pt2|MODEL.ts IMAGES.npy [--topk K] [--device cpu|cuda]
//
// IMAGES.npy holds uint8 RGB images (N, S, S, 3) at the model's input size S (numpy's np.save
// format; Python writes it with `np.save(path, batch)`). The package carries its input size, label
// names and coarse groups in its metadata (rald_fast/export/formats.py; a .ts keeps the same fields
// as TorchScript extra files, rald_fast/export/torchscript.py), so nothing here can drift from
// training. One line per image on stdout, tab-separated:
//   index  fine_label  coarse_label  p(fine)  top-k as label:prob ...  all probabilities (space-separated)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) out.push_back(line);
  return out;
}

// A minimal reader of numpy's .npy v1/v2/v3 format for C-ordered uint8 arrays.
torch::Tensor read_npy_uint8(const std::string& path, std::vector<int64_t>& shape) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  char magic[6];
  f.read(magic, 6);
  if (!f || std::string(magic, 6) != "\x93NUMPY") throw std::runtime_error(path + ": not a .npy file");
  unsigned char version[2];
  f.read(reinterpret_cast<char*>(version), 2);
  uint32_t header_len = 0;
  if (version[0] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, ' ');
  f.read(header.data(), header_len);
  if (header.find("'descr': '|u1'") == std::string::npos)
    throw std::runtime_error(path + ": expected a uint8 array (descr '|u1'), header: " + header);
  if (header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path + ": expected a C-ordered array");
  auto open = header.find('('), close = header.find(')');
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  shape.clear();
  for (std::string d; std::getline(dims, d, ',');)
    if (d.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(d));
  int64_t count = 1;
  for (auto d : shape) count *= d;
  auto data = torch::empty(shape, torch::kUInt8);
  f.read(reinterpret_cast<char*>(data.data_ptr<uint8_t>()), count);
  if (f.gcount() != count) throw std::runtime_error(path + ": truncated data");
  return data;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The metadata fields this program reads (formats.flat_metadata) and a function images -> probs.
struct Model {
  std::map<std::string, std::string> meta;
  std::function<torch::Tensor(const torch::Tensor&)> probs;
};

Model load_model(const std::string& path, const std::string& device) {
  Model m;
  if (ends_with(path, ".ts")) {
    // TorchScript: the metadata are extra files in the archive, read while loading
    torch::jit::ExtraFilesMap extra{{"rald_fast.version", ""}, {"rald_fast.image_size", ""},
                                    {"rald_fast.itrr_mode", ""}, {"rald_fast.fine", ""},
                                    {"rald_fast.coarse_of_fine", ""}};
    auto module = std::make_shared<torch::jit::Module>(torch::jit::load(path, torch::Device(device), extra));
    module->eval();
    for (auto& [k, v] : extra)
      if (!v.empty()) m.meta[k] = v;
    m.probs = [module](const torch::Tensor& x) {
      return module->forward({x}).toTuple()->elements().at(1).toTensor();
    };
  } else {
    auto loader = std::make_shared<torch::inductor::AOTIModelPackageLoader>(path);
    for (auto& [k, v] : loader->get_metadata()) m.meta[k] = v;
    m.probs = [loader](const torch::Tensor& x) { return loader->run({x}).at(1); };
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2|MODEL.ts IMAGES.npy [--topk K] [--device cpu|cuda]\n";
    return 2;
  }
  const std::string model_path = argv[1], images_path = argv[2];
  int topk = 3;
  std::string device = "cpu";
  for (int i = 3; i + 1 < argc; i += 2) {
    std::string opt = argv[i];
    if (opt == "--topk") topk = std::stoi(argv[i + 1]);
    else if (opt == "--device") device = argv[i + 1];
    else { std::cerr << "error: unknown option " << opt << "\n"; return 2; }
  }
  try {
    torch::NoGradGuard no_grad;
    auto model = load_model(model_path, device);
    auto& meta = model.meta;
    if (!meta.count("rald_fast.version") || meta["rald_fast.version"] != "1") {
      std::cerr << "error: " << model_path << ": not a rald_fast artifact of format version 1\n";
      return 2;
    }
    const int64_t size = std::stoll(meta["rald_fast.image_size"]);
    const auto fine = split_lines(meta["rald_fast.fine"]);
    const auto coarse = split_lines(meta["rald_fast.coarse_of_fine"]);

    std::vector<int64_t> shape;
    auto images = read_npy_uint8(images_path, shape);
    if (shape.size() != 4 || shape[1] != size || shape[2] != size || shape[3] != 3) {
      std::cerr << "error: " << images_path << ": expected uint8 images (N, " << size << ", " << size
                << ", 3), got shape (";
      for (size_t i = 0; i < shape.size(); ++i) std::cerr << (i ? ", " : "") << shape[i];
      std::cerr << ")\n";
      return 2;
    }
    // (N, S, S, 3) uint8 -> (N, 3, S, S) float32 in 0..255; normalisation happens inside the model
    auto x = images.permute({0, 3, 1, 2}).to(torch::kFloat32).contiguous().to(torch::Device(device));
    auto probs = model.probs(x).to(torch::kCPU).contiguous();
    const int64_t n = probs.size(0), c = probs.size(1);
    if (c != static_cast<int64_t>(fine.size())) {
      std::cerr << "error: the model returned " << c << " classes, its metadata names " << fine.size() << "\n";
      return 2;
    }
    auto p = probs.accessor<float, 2>();
    auto order = probs.argsort(1, /*descending=*/true);
    auto o = order.accessor<int64_t, 2>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t best = o[i][0];
      std::printf("%lld\t%s\t%s\t%.6f\t", static_cast<long long>(i), fine[best].c_str(),
                  best < static_cast<int64_t>(coarse.size()) ? coarse[best].c_str() : "", p[i][best]);
      for (int64_t k = 0; k < std::min<int64_t>(topk, c); ++k)
        std::printf("%s%s:%.6f", k ? " " : "", fine[o[i][k]].c_str(), p[i][o[i][k]]);
      std::printf("\t");
      for (int64_t j = 0; j < c; ++j) std::printf("%s%.7f", j ? " " : "", p[i][j]);
      std::printf("\n");
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
