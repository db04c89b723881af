// A vector whose first N elements live inline: what an operation pins is almost always one
// local region and one remote key, and a heap allocation for each cost more than the pin.
#pragma once

#include <array>
#include <cstddef>
#include <utility>
#include <vector>

namespace zcx::detail {

template <class T, size_t N>
class SmallVector {
 public:
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  T& back() { return (*this)[size_ - 1]; }
  const T& back() const { return (*this)[size_ - 1]; }
  T& operator[](size_t i) { return i < N ? inline_[i] : more_[i - N]; }
  const T& operator[](size_t i) const { return i < N ? inline_[i] : more_[i - N]; }

  template <class... Args>
  void emplace_back(Args&&... args) {
    if (size_ < N) {
      inline_[size_] = T(std::forward<Args>(args)...);
    } else {
      more_.emplace_back(std::forward<Args>(args)...);
    }
    ++size_;
  }
  void push_back(T v) { emplace_back(std::move(v)); }

  /// Destroys the elements now (inline ones by assigning T{}), keeping any heap capacity.
  void clear() {
    for (size_t i = 0; i < size_ && i < N; ++i) inline_[i] = T();
    more_.clear();
    size_ = 0;
  }

  template <class F>
  void forEach(F&& f) {
    for (size_t i = 0; i < size_; ++i) f((*this)[i]);
  }
  template <class F>
  bool any(F&& f) const {
    for (size_t i = 0; i < size_; ++i)
      if (f((*this)[i])) return true;
    return false;
  }

 private:
  std::array<T, N> inline_{};
  std::vector<T> more_;
  size_t size_ = 0;
};

}  // namespace zcx::detail
