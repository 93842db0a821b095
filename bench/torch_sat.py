"""The PyTorch Show-Attend-Tell baseline the decoder benchmarks measure jaxcap against (bench.decoder).

Written the way the widely used implementation does it: the encoder grid is projected for attention again at
EVERY time step, a Python loop calls nn.LSTMCell, the batch shrinks as short captions end, and beam search
takes one image at a time. Same sizes as jaxcap's decoder. Used only by the benchmarks, as the baseline every
figure is divided by.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
  def __init__(self, encoder_dim, decoder_dim, attention_dim):
    super().__init__()
    self.encoder_att = nn.Linear(encoder_dim, attention_dim)
    self.decoder_att = nn.Linear(decoder_dim, attention_dim)
    self.full_att = nn.Linear(attention_dim, 1)

  def forward(self, encoder_out, decoder_hidden):
    att1 = self.encoder_att(encoder_out)               # recomputed every step: the waste jaxcap hoists
    att2 = self.decoder_att(decoder_hidden)
    att = self.full_att(torch.relu(att1 + att2.unsqueeze(1))).squeeze(2)
    alpha = torch.softmax(att, dim=1)
    return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class DecoderWithAttention(nn.Module):
  def __init__(self, vocab_size, embed_dim=512, decoder_dim=512, attention_dim=512, encoder_dim=1280, dropout=0.5):
    super().__init__()
    self.vocab_size = vocab_size
    self.attention = Attention(encoder_dim, decoder_dim, attention_dim)
    self.embedding = nn.Embedding(vocab_size, embed_dim)
    self.dropout = nn.Dropout(p=dropout)
    self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim, bias=True)
    self.init_h = nn.Linear(encoder_dim, decoder_dim)
    self.init_c = nn.Linear(encoder_dim, decoder_dim)
    self.f_beta = nn.Linear(decoder_dim, encoder_dim)
    self.fc = nn.Linear(decoder_dim, vocab_size)

  def init_hidden_state(self, encoder_out):
    mean = encoder_out.mean(dim=1)
    return self.init_h(mean), self.init_c(mean)

  def forward(self, encoder_out, captions, lengths):
    """encoder_out [B, N, C], captions [B, T] sorted by decreasing length, lengths [B] (incl. <start>)."""
    b = encoder_out.size(0)
    embeddings = self.embedding(captions)
    h, c = self.init_hidden_state(encoder_out)
    decode_lengths = (lengths - 1).tolist()
    T = max(decode_lengths)
    predictions = torch.zeros(b, T, self.vocab_size)
    alphas = torch.zeros(b, T, encoder_out.size(1))
    for t in range(T):
      bt = sum(int(l > t) for l in decode_lengths)       # the batch shrinks as captions end
      awe, alpha = self.attention(encoder_out[:bt], h[:bt])
      gate = torch.sigmoid(self.f_beta(h[:bt]))
      h, c = self.decode_step(torch.cat([embeddings[:bt, t, :], gate * awe], dim=1), (h[:bt], c[:bt]))
      predictions[:bt, t, :] = self.fc(self.dropout(h))
      alphas[:bt, t, :] = alpha
    return predictions, alphas, decode_lengths


def train_step(model, optimizer, encoder_out, captions, lengths, alpha_c=1.0):
  from torch.nn.utils.rnn import pack_padded_sequence
  scores, alphas, decode_lengths = model(encoder_out, captions, lengths)
  targets = captions[:, 1:]
  scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
  targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
  loss = F.cross_entropy(scores, targets) + alpha_c * ((1.0 - alphas.sum(dim=1)) ** 2).mean()
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()
  return loss.item()


@torch.no_grad()
def beam_search_one(model, encoder_out, k, start_id, end_id, max_len=20):
  """One image, as the common implementation does it. encoder_out [1, N, C]."""
  encoder_out = encoder_out.expand(k, *encoder_out.shape[1:])
  prev = torch.full((k, 1), start_id, dtype=torch.long)
  seqs, top_scores = prev, torch.zeros(k, 1)
  complete, complete_scores = [], []
  h, c = model.init_hidden_state(encoder_out)
  step = 1
  while True:
    emb = model.embedding(prev).squeeze(1)
    awe, _ = model.attention(encoder_out, h)
    awe = torch.sigmoid(model.f_beta(h)) * awe
    h, c = model.decode_step(torch.cat([emb, awe], dim=1), (h, c))
    scores = top_scores.expand_as(model.fc(h)) + F.log_softmax(model.fc(h), dim=1)
    if step == 1:
      top_scores, words = scores[0].topk(k, 0)
    else:
      top_scores, words = scores.view(-1).topk(k, 0)
    prev_inds = torch.div(words, model.vocab_size, rounding_mode="floor")
    next_words = words % model.vocab_size
    seqs = torch.cat([seqs[prev_inds], next_words.unsqueeze(1)], dim=1)
    incomplete = [i for i, w in enumerate(next_words) if w != end_id]
    done = [i for i in range(len(next_words)) if i not in incomplete]
    if done:
      complete.extend(seqs[done].tolist())
      complete_scores.extend(top_scores[done])
    k -= len(done)
    if k == 0:
      break
    seqs = seqs[incomplete]
    h, c = h[prev_inds[incomplete]], c[prev_inds[incomplete]]
    encoder_out = encoder_out[prev_inds[incomplete]]
    top_scores = top_scores[incomplete].unsqueeze(1)
    prev = next_words[incomplete].unsqueeze(1)
    if step > max_len:
      break
    step += 1
  if not complete:  # the common code crashes here (max() of an empty list); the baseline returns the live beam
    return seqs[0].tolist()
  return complete[max(range(len(complete_scores)), key=lambda i: complete_scores[i])]
